// ONNX Runtime's Linux build (1.30 here) starts a telemetry client (Microsoft's 1DS SDK) when its environment is made:
// every run left an empty mat-debug-<pid>.log and a .ses device-session file in $TMPDIR, and the client tries HTTPS
// uploads. A local-first sample should do neither unasked. ORT_DISABLE_TELEMETRY=1 turns the client off (seen on this
// machine: no files at all). ONNX Runtime reads it with getenv when its environment is made, and .NET's
// Environment.SetEnvironmentVariable does not reach getenv on Unix, so it goes through libc's setenv. A value the user
// set (ORT_DISABLE_TELEMETRY=0 to keep telemetry) is left as it is.
using System.Runtime.InteropServices;

namespace SwiftKV.Samples.Rag;

static class OnnxRuntimeTelemetry
{
    public const string Variable = "ORT_DISABLE_TELEMETRY";

    /// <summary>Sets ORT_DISABLE_TELEMETRY=1 for this process unless it is set; call before ONNX Runtime makes its environment.</summary>
    public static void DisableUnlessSet()
    {
        if (Environment.GetEnvironmentVariable(Variable) is not null) return;
        if (OperatingSystem.IsWindows()) Environment.SetEnvironmentVariable(Variable, "1");   // SetEnvironmentVariableW: the process's own block
        else if (setenv(Variable, "1", 0) != 0) return;   // best effort: telemetry stays as ONNX Runtime has it
        Environment.SetEnvironmentVariable(Variable, "1");   // .NET's view agrees with the native one
    }

    [DllImport("libc", CharSet = CharSet.Ansi, SetLastError = true)]
    static extern int setenv(string name, string value, int overwrite);
}
