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

/// Instruction budget of one render (minijinja fuel): a loop or recursion that runs longer
/// stops with an error naming the fuel.
pub const FUEL: u64 = 5_000_000;
/// Largest rendered prompt accepted, in bytes: rendering stops as soon as the output would
/// pass it.
pub const MAX_RENDERED: usize = 16 << 20;
/// Deepest nesting of frames (loops, `with` blocks; a macro call counts 4) one render may
/// reach. Real chat templates stay well under 20; the limit keeps a recursive macro from
/// exhausting the stack of the thread that renders.
pub const RECURSION_LIMIT: usize = 200;
/// Longest template source accepted, in bytes (real chat templates are a few KiB).
pub const MAX_TEMPLATE_SOURCE: usize = 1 << 20;

/// An `io::Write` into memory that refuses to grow past `limit` bytes and remembers that it
/// did, so the render error can be named.
struct BoundedOutput {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() > self.limit - self.buf.len() {
            self.exceeded = true;
            return Err(std::io::Error::other("chat template output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
    ///
    /// Bounded: a template longer than [`MAX_TEMPLATE_SOURCE`], a render that needs more than
    /// [`FUEL`] instructions, nests deeper than [`RECURSION_LIMIT`] or writes more than
    /// [`MAX_RENDERED`] bytes stops with an error naming the limit.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        if self.source.len() > MAX_TEMPLATE_SOURCE {
            return Err(Error::Tokenizer(format!(
                "chat template source is {} bytes, over the limit of {MAX_TEMPLATE_SOURCE}",
                self.source.len()
            )));
        }
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
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
        let tmpl = env
            .template_from_named_str("chat", &self.source)
            .map_err(|e| Error::Tokenizer(format!("chat template does not parse: {e}")))?;
        let mut out = BoundedOutput {
            buf: Vec::new(),
            limit: MAX_RENDERED,
            exceeded: false,
        };
        let rendered = tmpl.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            },
            &mut out,
        );
        if out.exceeded {
            return Err(Error::Tokenizer(format!(
                "chat template output exceeds the limit of {MAX_RENDERED} bytes"
            )));
        }
        if let Err(e) = rendered {
            return Err(Error::Tokenizer(match e.kind() {
                minijinja::ErrorKind::OutOfFuel => {
                    format!("chat template ran out of fuel (limit {FUEL} instructions): {e}")
                }
                _ if e.detail() == Some("recursion limit exceeded") => {
                    format!("chat template exceeds the recursion limit of {RECURSION_LIMIT}: {e}")
                }
                _ => format!("chat template failed: {e}"),
            }));
        }
        // minijinja writes whole `str` fragments, so this never fails; no panic if it did.
        String::from_utf8(out.buf)
            .map_err(|e| Error::Tokenizer(format!("chat template output is not UTF-8: {e}")))
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

    fn render_err(template: &str) -> String {
        ChatTemplate::new(Some(template), "", "")
            .render(&[ChatMessage::new("user", "hi")], true)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn looping_templates_run_out_of_fuel() {
        // minijinja refuses a range of more than 100000 items outright, naming it.
        let e = render_err("{% for i in range(1000000000) %}x{% endfor %}");
        assert!(e.contains("range has too many elements"), "{e}");
        // Nested loops of allowed ranges: 10^10 iterations, stopped by the fuel.
        let e = render_err(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        );
        assert!(
            e.contains("ran out of fuel (limit 5000000 instructions)"),
            "{e}"
        );
    }

    #[test]
    fn huge_output_is_stopped_at_the_limit() {
        // 100 MB in 100000 writes of 1000 bytes: within the fuel, over the output limit.
        let e = render_err("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}");
        assert!(
            e.contains("output exceeds the limit of 16777216 bytes"),
            "{e}"
        );
        // One write larger than the limit.
        let e = render_err("{{ 'x' * 20000000 }}");
        assert!(
            e.contains("output exceeds the limit of 16777216 bytes"),
            "{e}"
        );
        // Just under the limit renders.
        let t = ChatTemplate::new(Some("{{ 'x' * 16777216 }}"), "", "");
        assert_eq!(t.render(&[], false).unwrap().len(), MAX_RENDERED);
    }

    #[test]
    fn deep_recursion_is_stopped_before_the_stack_overflows() {
        // On a thread with Rust's default 2 MiB stack, as a host application's worker has.
        let e = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let macro_recursion =
                    render_err("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
                let loop_recursion =
                    render_err("{% for m in [1] recursive %}{{ loop([m]) }}{% endfor %}");
                (macro_recursion, loop_recursion)
            })
            .unwrap()
            .join()
            .unwrap();
        for e in [e.0, e.1] {
            assert!(e.contains("exceeds the recursion limit of 200"), "{e}");
        }
    }

    #[test]
    fn oversized_template_source_is_refused() {
        let big = format!("{{# {} #}}", "x".repeat(MAX_TEMPLATE_SOURCE));
        let e = render_err(&big);
        assert!(e.contains("over the limit of 1048576"), "{e}");
    }
}
