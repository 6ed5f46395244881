// Reading the reference outputs tests/reference writes: little-endian fp32 arrays (".f32").
namespace SwiftKV.Engine.Tests;

public static class FixtureFiles
{
    public static float[] ReadFloats(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        var floats = new float[bytes.Length / 4];
        Buffer.BlockCopy(bytes, 0, floats, 0, floats.Length * 4);
        return floats;
    }
}
