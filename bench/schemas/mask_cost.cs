// The host cost of schema-constrained decoding, without a GPU: N requests under one JSON schema step together over the
// synthetic 128K-token table that `serve-bench --json` uses (1-6 random printable bytes per id), each picking a token
// as sampling at temperature 1 over random logits would (Gumbel-max over the allowed ones), for --steps steps.
// Prints the time of every Apply (the mask a step waits for) summed per step, and its distribution: a mask the
// request's or the schema's kept ones already hold costs ~0.2 ms here, a fresh grammar pass ~2-4 ms.
//   dotnet run bench/schemas/mask_cost.cs -c Release -- [requests 32] [steps 128] [schema bench/schemas/forecast.json]
#:project ../../src/SwiftKV.Engine/SwiftKV.Engine.csproj
#:property PublishAot=false
#:property JsonSerializerIsReflectionEnabledByDefault=true
using System.Diagnostics;
using System.Text.Json;
using SwiftKV.Engine.Sampling;

int requests = args.Length > 0 ? int.Parse(args[0]) : 32, steps = args.Length > 1 ? int.Parse(args[1]) : 128;
string schemaPath = args.Length > 2 ? args[2] : Path.Combine(Path.GetDirectoryName(AppContext.GetData("EntryPointFilePath") as string ?? ".") ?? ".", "forecast.json");
const int vocab = 128256;
var rng = new Random(7);   // the same table as ServeBenchCommand.SyntheticTokenBytes
var table = new byte[]?[vocab];
for (int i = 0; i < vocab; i++)
{
    var b = new byte[i < 95 ? 1 : 1 + rng.Next(6)];
    for (int j = 0; j < b.Length; j++) b[j] = (byte)(i < 95 ? 32 + i : 32 + rng.Next(95));
    table[i] = b;
}
using var doc = JsonDocument.Parse(File.ReadAllText(schemaPath));
var schema = JsonSchemaGrammar.Compile(doc.RootElement);
var constraints = Enumerable.Range(0, requests).Select(_ => new JsonSchemaConstraint(schema, table, new HashSet<int>(), steps)).ToArray();
var logits = new float[vocab];
var random = new Random(1);
var applyMs = new List<double>(requests * steps);
var first = new System.Text.StringBuilder();
for (int s = 0; s < steps; s++)
    for (int q = 0; q < requests; q++)
    {
        for (int i = 0; i < vocab; i++) logits[i] = (float)(random.NextDouble() * 2 - 1);
        long start = Stopwatch.GetTimestamp();
        constraints[q].Apply(logits);
        applyMs.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        int best = 0;
        float top = float.NegativeInfinity;
        for (int i = 0; i < vocab; i++)
        {
            float g = logits[i] - MathF.Log(-MathF.Log((float)random.NextDouble() + 1e-12f));
            if (g > top) (top, best) = (g, i);
        }
        constraints[q].Accept(best);
        if (q == 0) first.Append(System.Text.Encoding.ASCII.GetString(table[best]!));
    }
double total = applyMs.Sum();
applyMs.Sort();
double P(double p) => applyMs[(int)(p * (applyMs.Count - 1))];
Console.WriteLine($"{requests} requests x {steps} steps under {Path.GetFileName(schemaPath)}: Apply {total:F0} ms in all, {total / steps:F2} ms per step (one thread); " +
                  $"{applyMs.Count(m => m > 0.5)} of {applyMs.Count} applies over 0.5 ms; p50 {P(0.5):F3}, p90 {P(0.9):F3}, p99 {P(0.99):F3}, max {applyMs[^1]:F1} ms");
Console.WriteLine($"request 0 wrote: {first}");
