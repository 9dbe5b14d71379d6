//! Chat templates: a model's Jinja `chat_template` rendered with minijinja under Hugging Face
//! semantics (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`,
//! `raise_exception`, Python string methods, trim_blocks + lstrip_blocks), ChatML when the
//! model ships none. Rendering is bounded: template fuel and output size are capped so a
//! hostile template cannot hang or exhaust the host.

use serde::Serialize;

use crate::error::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// ChatML, the fallback for models without a template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Instruction budget of one render (minijinja fuel).
const FUEL: u64 = 5_000_000;
/// Largest rendered prompt accepted, in bytes.
pub const MAX_RENDERED: usize = 16 << 20;

/// A compiled chat template with its special tokens.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// `source` None means ChatML.
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.unwrap_or(CHATML).to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation (and the assistant prefix when `add_generation_prompt`).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Date-dependent templates get a fixed, neutral date: renders stay reproducible.
            "01 Jan 2026".to_string()
        });
        env.add_template("chat", &self.source)
            .map_err(|e| Error::Tokenizer(format!("chat template does not parse: {e}")))?;
        let tmpl = env.get_template("chat").expect("just added");
        let out = tmpl
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| Error::Tokenizer(format!("chat template failed: {e}")))?;
        if out.len() > MAX_RENDERED {
            return Err(Error::Tokenizer(format!(
                "chat template rendered {} bytes (limit {MAX_RENDERED})",
                out.len()
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::new(None, "", "");
        let s = t.render(&[ChatMessage::new("user", "hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let t = ChatTemplate::new(
            Some("{% if messages[0]['role'] != 'user' %}{{ raise_exception('bad role') }}{% endif %}{{ messages[0]['content'].strip().upper() }}"),
            "",
            "",
        );
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hey ")], false)
                .unwrap(),
            "HEY"
        );
        let e = t
            .render(&[ChatMessage::new("system", "x")], false)
            .unwrap_err();
        assert!(e.to_string().contains("bad role"), "{e}");
    }

    #[test]
    fn runaway_templates_are_stopped() {
        let t = ChatTemplate::new(Some("{% for i in range(100000000) %}x{% endfor %}"), "", "");
        assert!(t.render(&[], false).is_err());
    }
}
