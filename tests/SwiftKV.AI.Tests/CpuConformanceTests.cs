// The IChatClient conformance suite on the CPU backend with the tiny random-weight SwiftKV model (runs in CI).
using Microsoft.Extensions.AI;
using SwiftKV.AI.Conformance;

namespace SwiftKV.AI.Tests;

public sealed class CpuConformanceTests(TinyChatModel tiny) : ChatClientConformanceTests
{
    protected override IChatClient CreateClient() => tiny.Client();
}
