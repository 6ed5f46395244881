// Shape checks shared by the typed launchers: a launch never reads or writes past a device span.
namespace SwiftKV.Cuda.Kernels;

internal static class KernelGuard
{
    public static void Positive(int value, string kernel, string what)
    {
        if (value < 1) throw new ArgumentOutOfRangeException(what, value, $"{kernel}: {what} must be >= 1.");
    }

    public static void Positive(long value, string kernel, string what)
    {
        if (value < 1) throw new ArgumentOutOfRangeException(what, value, $"{kernel}: {what} must be >= 1.");
    }

    public static void Fits<T>(DeviceSpan<T> span, long needed, string kernel, string what, string shape) where T : unmanaged
    {
        if (span.Length < needed)
            throw new ArgumentException($"{kernel}: {what} holds {span.Length} elements but {shape} needs {needed}.", what);
    }

    public static void FitsOptional<T>(DeviceSpan<T>? span, long needed, string kernel, string what, string shape) where T : unmanaged
    {
        if (span is { } s) Fits(s, needed, kernel, what, shape);
    }

    public static ulong Address<T>(DeviceSpan<T>? span) where T : unmanaged => span?.Address ?? 0;
}
