//! Hostile chat templates and messages through `ChatTemplate::render`. No GPU.
//!
//! Input layout (so that seeds are readable text): one flag byte (bit 0: add_generation_prompt,
//! bit 1: no template, i.e. the ChatML fallback), then UTF-8 fields separated by NUL: the
//! template, the BOS token, the EOS token, then messages as `role<0x01>content`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick::formats::chat_template::{ChatMessage, ChatTemplate, MAX_RENDERED};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut fields = text.split('\0');
    let template = fields.next().unwrap_or("");
    let bos = fields.next().unwrap_or("");
    let eos = fields.next().unwrap_or("");
    let messages: Vec<ChatMessage> = fields
        .map(|m| {
            let (role, content) = m.split_once('\u{1}').unwrap_or(("user", m));
            ChatMessage::new(role, content)
        })
        .collect();
    let source = (flags & 2 == 0).then_some(template);
    let t = ChatTemplate::new(source, bos, eos);
    if let Ok(out) = t.render(&messages, flags & 1 != 0) {
        assert!(out.len() <= MAX_RENDERED);
    }
});
