//! Streaming detokenisation: token bytes accumulate until they form whole UTF-8 characters
//! (no U+FFFD mid-stream for a character split across tokens), and text that could be the
//! start of a stop string is held back until it is known not to be one.

use crate::model::Model;

pub struct TextStream {
    /// Holds the model (an `Arc`) so the stream can outlive borrows of the session.
    model: Model,
    stop: Vec<String>,
    bytes: Vec<u8>,
    held: String,
}

/// Splits `bytes` into the longest valid UTF-8 prefix (invalid sequences replaced) and the
/// incomplete tail that may still become a character.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                bytes.clear();
                return out;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[..good]).unwrap());
                match e.error_len() {
                    // Incomplete character at the end: keep it for the next token.
                    None => {
                        bytes.drain(..good);
                        return out;
                    }
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        bytes.drain(..good + bad);
                    }
                }
            }
        }
    }
}

impl TextStream {
    /// The text stream of a generation on `model`, None when it has no tokenizer (ids only).
    pub fn for_model(model: &Model, stop: &[String]) -> Option<Self> {
        model
            .inner
            .tokenizer
            .is_some()
            .then(|| TextStream::new(model.clone(), stop))
    }

    pub fn new(model: Model, stop: &[String]) -> Self {
        TextStream {
            model,
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            bytes: Vec::new(),
            held: String::new(),
        }
    }

    /// Adds a token; returns the text that is now safe to show and whether a stop string
    /// was completed (the text then ends right before it).
    pub fn push(&mut self, id: u32) -> (String, bool) {
        if let Some(b) = self
            .model
            .inner
            .tokenizer
            .as_ref()
            .and_then(|t| t.token_bytes(id))
        {
            self.bytes.extend_from_slice(&b);
        }
        let new = take_utf8(&mut self.bytes);
        self.held.push_str(&new);
        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            self.bytes.clear();
            return (out, true);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stop {
            for (i, _) in s.char_indices().skip(1) {
                if self.held.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// Everything still held back (at the end of generation).
    pub fn flush(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.bytes.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.bytes));
            self.bytes.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::take_utf8;

    #[test]
    fn utf8_split_across_tokens_waits_for_the_whole_character() {
        let euro = "€".as_bytes(); // 3 bytes
        let mut b = vec![b'a', euro[0]];
        assert_eq!(take_utf8(&mut b), "a");
        b.push(euro[1]);
        assert_eq!(take_utf8(&mut b), "");
        b.push(euro[2]);
        assert_eq!(take_utf8(&mut b), "€");
        assert!(b.is_empty());
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut b = vec![b'x', 0xff, b'y'];
        assert_eq!(take_utf8(&mut b), "x\u{FFFD}y");
    }
}
