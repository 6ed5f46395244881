// A vector store in one SQLite file: each chunk's text, source and embedding (float32 little-endian blob).
// Search is exact cosine top-k in C# over every row: for a few thousand chunks that is a millisecond or two, and
// it keeps the sample free of extensions. Swap in a vector database when the corpus grows.
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Microsoft.Data.Sqlite;

namespace SwiftKV.Samples.Rag;

/// <summary>A stored chunk: where it came from, its text and its embedding.</summary>
public sealed record StoredChunk(string Source, int Ordinal, string Text, float[] Vector)
{
    /// <summary>How a citation names this chunk.</summary>
    public string Id => $"{Source}#{Ordinal + 1}";
}

/// <summary>A search result.</summary>
public sealed record SearchHit(StoredChunk Chunk, float Score);

/// <summary>Chunks and their vectors in a SQLite database file.</summary>
public sealed class SqliteVectorStore : IDisposable
{
    readonly SqliteConnection _db;
    readonly int _dimensions;

    /// <summary>Opens (or creates) the database at <paramref name="path"/> for vectors of <paramref name="dimensions"/> floats.</summary>
    public SqliteVectorStore(string path, int dimensions)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(dimensions);
        _dimensions = dimensions;
        // No pooling: Dispose really closes the file, so callers can delete it afterwards.
        _db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        _db.Open();
        Execute("CREATE TABLE IF NOT EXISTS chunks (source TEXT NOT NULL, ordinal INTEGER NOT NULL, text TEXT NOT NULL, " +
                "embedding BLOB NOT NULL, PRIMARY KEY (source, ordinal))");
        Execute($"PRAGMA application_id = {ApplicationId}");   // marks the file as this store's (IsStore)

    }

    /// <summary>SQLite's application_id of the files this store makes ("SKVR").</summary>
    const int ApplicationId = 0x534B5652;

    /// <summary>
    /// Whether <paramref name="path"/> is a file this store made (SQLite with its application_id): only such a file may
    /// be replaced. A file it cannot read as one (not SQLite, corrupt, locked, unreadable) is not.
    /// </summary>
    public static bool IsStore(string path)
    {
        try
        {
            Span<byte> header = stackalloc byte[16];
            using (var f = File.OpenRead(path))
                if (f.ReadAtLeast(header, 16, throwOnEndOfStream: false) < 16 || !header.SequenceEqual("SQLite format 3\0"u8)) return false;
            using var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString());
            db.Open();
            using var cmd = db.CreateCommand();
            cmd.CommandText = "PRAGMA application_id";
            return Convert.ToInt32(cmd.ExecuteScalar()) == ApplicationId;
        }
        catch (Exception e) when (e is SqliteException or IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Number of stored chunks.</summary>
    public int Count
    {
        get
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT COUNT(*) FROM chunks";
            return Convert.ToInt32(cmd.ExecuteScalar());
        }
    }

    /// <summary>Removes every chunk.</summary>
    public void Clear() => Execute("DELETE FROM chunks");

    /// <summary>Inserts or replaces chunks (keyed by source and ordinal) in one transaction.</summary>
    public void Upsert(IEnumerable<StoredChunk> chunks)
    {
        ArgumentNullException.ThrowIfNull(chunks);
        using var tx = _db.BeginTransaction();
        using var cmd = _db.CreateCommand();
        cmd.Transaction = tx;
        cmd.CommandText = "INSERT OR REPLACE INTO chunks (source, ordinal, text, embedding) VALUES ($s, $o, $t, $e)";
        var s = cmd.Parameters.Add("$s", SqliteType.Text);
        var o = cmd.Parameters.Add("$o", SqliteType.Integer);
        var t = cmd.Parameters.Add("$t", SqliteType.Text);
        var e = cmd.Parameters.Add("$e", SqliteType.Blob);
        foreach (var c in chunks)
        {
            if (c.Vector.Length != _dimensions)
                throw new ArgumentException($"chunk {c.Id} has a {c.Vector.Length}-dimensional vector; this store holds {_dimensions}.", nameof(chunks));
            (s.Value, o.Value, t.Value, e.Value) = (c.Source, c.Ordinal, c.Text, MemoryMarshal.AsBytes(c.Vector.AsSpan()).ToArray());
            cmd.ExecuteNonQuery();
        }
        tx.Commit();
    }

    /// <summary>The <paramref name="top"/> chunks most similar (cosine) to <paramref name="query"/>, best first.</summary>
    public IReadOnlyList<SearchHit> Search(ReadOnlySpan<float> query, int top)
    {
        if (query.Length != _dimensions)
            throw new ArgumentException($"the query vector has {query.Length} dimensions; this store holds {_dimensions}.", nameof(query));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(top);
        var hits = new List<SearchHit>();
        using var cmd = _db.CreateCommand();
        cmd.CommandText = "SELECT source, ordinal, text, embedding FROM chunks";
        using var reader = cmd.ExecuteReader();
        while (reader.Read())
        {
            byte[] blob = (byte[])reader["embedding"];
            if (blob.Length != _dimensions * sizeof(float))
                throw new InvalidDataException($"chunk {reader.GetString(0)}#{reader.GetInt32(1) + 1} holds {blob.Length} bytes of embedding; expected {_dimensions * sizeof(float)}.");
            float[] vector = MemoryMarshal.Cast<byte, float>(blob).ToArray();
            hits.Add(new SearchHit(new StoredChunk(reader.GetString(0), reader.GetInt32(1), reader.GetString(2), vector),
                TensorPrimitives.CosineSimilarity(query, vector)));
        }
        return hits.OrderByDescending(h => h.Score).Take(top).ToList();
    }

    void Execute(string sql)
    {
        using var cmd = _db.CreateCommand();
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    /// <inheritdoc />
    public void Dispose() => _db.Dispose();
}
