// One message of a chat conversation, as the Llama 3.1 template sees it.
namespace SwiftKV.Model.Tokenization;

/// <summary>A chat message: role (system, user, assistant or ipython) and its text.</summary>
public sealed record ChatTurn(string Role, string Content);
