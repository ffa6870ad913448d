//! GPT-2 BPE (tiktoken's `r50k_base`, embedded in the binary, works offline), as Megatron's
//! `GPT2BPETokenizer`: `encode_ordinary`, so the text `<|endoftext|>` inside a document is ordinary text.

use std::sync::{Arc, LazyLock};
use tiktoken_rs::CoreBPE;

/// End of document (`<|endoftext|>`), appended to every non-empty document.
pub const EOD: u32 = 50256;
/// Tokens in GPT-2's vocabulary (padded to 50304 rows by the model).
pub const VOCAB_SIZE: usize = 50257;

static BPE: LazyLock<Arc<CoreBPE>> =
    LazyLock::new(|| Arc::new(tiktoken_rs::r50k_base().expect("r50k_base is embedded")));

pub fn encode(text: &str) -> Vec<u32> {
    BPE.encode_ordinary(text)
}

/// Decode tokens to text; bytes that do not form valid UTF-8 (a token cut mid-character) become U+FFFD.
pub fn decode(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = BPE._decode_native_and_split(tokens.to_vec()).flatten().collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_tokens_and_endoftext_as_text() {
        assert_eq!(encode("Hello world"), vec![15496, 995]);
        // The special token's text is split like any other text, never mapped to 50256.
        let t = encode("a<|endoftext|>b");
        assert!(!t.contains(&EOD), "{t:?}");
        assert_eq!(decode(&t), "a<|endoftext|>b");
        assert_eq!(decode(&[EOD]), "<|endoftext|>");
    }
}
