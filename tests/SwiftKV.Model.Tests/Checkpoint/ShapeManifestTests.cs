// Approval tests of the 8B and 70B tensor layouts, plain and SwiftKV, rendered without allocating weights.
// The approved files live in tests/SwiftKV.Model.Tests/Approved/ and were checked by hand against SWIFTKV.md.
// On a mismatch the test writes <name>.received.txt beside the approved file (diff the two; copy it over the
// approved one only if the change is intended) and fails naming the first differing line.
using System.Runtime.CompilerServices;
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class ShapeManifestTests
{
    static LlamaConfig SwiftKv(string preset, int l, int g) => ModelPresets.Get(preset) with
    {
        ModelType = "llama_swiftkv",
        SwiftKv = true,
        NumKeyValueLayers = l,
        KeyValueGroupSize = g,
    };

    /// <summary>The checkpoint section, plus for SwiftKV configs what loads with SwiftKV on.</summary>
    static string Manifest(LlamaConfig config) =>
        config.SwiftKv ? ShapeManifest.Render(config) + "\n" + ShapeManifest.Render(config, swiftKvEnabled: true) : ShapeManifest.Render(config);

    [Fact]
    public void Render_Llama31_8B_MatchesApproved() => Verify("llama-3.1-8b", Manifest(ModelPresets.Get("llama-3.1-8b")));

    [Fact]
    public void Render_Llama31_8B_SwiftKvL16G1_MatchesApproved() => Verify("llama-3.1-8b-swiftkv-l16-g1", Manifest(SwiftKv("llama-3.1-8b", 16, 1)));

    [Fact]
    public void Render_Llama31_8B_SwiftKvL16G4_MatchesApproved() => Verify("llama-3.1-8b-swiftkv-l16-g4", Manifest(SwiftKv("llama-3.1-8b", 16, 4)));

    [Fact]
    public void Render_Llama31_70B_MatchesApproved() => Verify("llama-3.1-70b", Manifest(ModelPresets.Get("llama-3.1-70b")));

    [Fact]
    public void Render_Llama31_70B_SwiftKvL40G1_MatchesApproved() => Verify("llama-3.1-70b-swiftkv-l40-g1", Manifest(SwiftKv("llama-3.1-70b", 40, 1)));

    [Fact]
    public void Render_SwiftKvOff_EqualsPlainLlamaCheckpoint()
    {
        var plain = ShapeManifest.Render(ModelPresets.Get("llama-3.1-8b"));
        var off = ShapeManifest.Render(SwiftKv("llama-3.1-8b", 16, 4), swiftKvEnabled: false);
        Assert.Equal(plain.Split('\n').Skip(1), off.Split('\n').Skip(1));
    }

    static void Verify(string name, string received, [CallerFilePath] string testFile = "")
    {
        string approvedDir = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(testFile)!, "..", "Approved"));
        string approvedPath = Path.Combine(approvedDir, name + ".approved.txt");
        string receivedPath = Path.Combine(approvedDir, name + ".received.txt");
        string approved = File.Exists(approvedPath) ? File.ReadAllText(approvedPath).ReplaceLineEndings("\n") : "";
        if (approved == received)
        {
            File.Delete(receivedPath);
            return;
        }
        Directory.CreateDirectory(approvedDir);
        File.WriteAllText(receivedPath, received);
        string[] a = approved.Split('\n'), r = received.Split('\n');
        int line = 0;
        while (line < a.Length && line < r.Length && a[line] == r[line]) line++;
        Assert.Fail($"{name}: manifest differs from {approvedPath} at line {line + 1}:\n" +
            $"  approved: {(line < a.Length ? a[line] : "<end of file>")}\n" +
            $"  received: {(line < r.Length ? r[line] : "<end of file>")}\n" +
            $"Received text written to {receivedPath}.");
    }
}
