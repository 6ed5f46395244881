// Per serving step, 32 schema masks made as the engine makes them (LogitMask.Of on the thread pool, all at once),
// then Gumbel picks over random logits and Accept: the wall time from start to the last mask (the step's wait).
#:project /work/main/src/SwiftKV.Engine/SwiftKV.Engine.csproj
#:property PublishAot=false
#:property JsonSerializerIsReflectionEnabledByDefault=true
using System.Diagnostics;
using System.Text.Json;
using SwiftKV.Engine.Sampling;
int requests = 32, steps = 128;
string schemaPath = args[0];
const int vocab = 128256;
var rng = new Random(7);
var table = new byte[]?[vocab];
for (int i = 0; i < vocab; i++) { var b = new byte[i < 95 ? 1 : 1 + rng.Next(6)]; for (int j = 0; j < b.Length; j++) b[j] = (byte)(i < 95 ? 32 + i : 32 + rng.Next(95)); table[i] = b; }
var schema = JsonSchemaGrammar.Compile(JsonDocument.Parse(File.ReadAllText(schemaPath)).RootElement);
for (int rep = 0; rep < 3; rep++)
{
    var cs = Enumerable.Range(0, requests).Select(_ => (ILogitsConstraint)new JsonSchemaConstraint(schema, table, new HashSet<int>(), steps)).ToArray();
    if (args.Length > 1) cs = Enumerable.Range(0, requests).Select(_ => (ILogitsConstraint)new JsonConstraint(table, new HashSet<int>(), steps)).ToArray();
    var random = new Random(1);
    var waits = new List<double>();
    var logits = new float[vocab];
    long gc0 = GC.CollectionCount(2);
    var total = Stopwatch.StartNew();
    for (int s = 0; s < steps; s++)
    {
        long t0 = Stopwatch.GetTimestamp();
        var masks = cs.Select(c => LogitMask.Of(c, vocab)).ToArray();
        var allowed = masks.Select(m => m.Wait()).ToArray();
        waits.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
        for (int q = 0; q < requests; q++)
        {
            int best = 0; float top = float.NegativeInfinity;
            for (int i = 0; i < vocab; i++)
            {
                if (allowed[q] is { } a && !a[i]) continue;
                float g = (float)(random.NextDouble() * 2 - 1) - MathF.Log(-MathF.Log((float)random.NextDouble() + 1e-12f));
                if (g > top) (top, best) = (g, i);
            }
            cs[q].Accept(best);
        }
    }
    waits.Sort();
    Console.WriteLine($"rep {rep}: {requests} x {steps} steps: mask wait per step mean {waits.Average():F2} ms, p50 {waits[steps / 2]:F2}, p90 {waits[(int)(steps * 0.9)]:F2}, max {waits[^1]:F2}; gen2 GCs {GC.CollectionCount(2) - gc0}; {Environment.ProcessorCount} cores");
}
