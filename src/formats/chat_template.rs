//! Chat templates: a model's Jinja `chat_template` rendered with minijinja under Hugging Face
//! semantics (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`,
//! `raise_exception`, Python string methods, trim_blocks + lstrip_blocks), ChatML when the
//! model ships none.
//!
//! Rendering a hostile template is bounded, each limit failing with an error that names it:
//! the template source ([`MAX_TEMPLATE_SOURCE`]), the instructions executed ([`FUEL`]), the
//! nesting depth ([`RECURSION_LIMIT`]), the rendered bytes ([`MAX_RENDERED`], checked as they
//! are written), and the filters and string methods that could build a huge value in one
//! step (sizes checked against [`MAX_RENDERED`] and [`MAX_ITEMS`] first; see `guards`).
//!
//! Known gap: minijinja (2.x) offers no hook for its operators, so a template can still grow
//! a string by repeated self-concatenation (`~`, `+`, each step within the fuel), or compare
//! or search (`==`, `in`) a sequence lazily repeated a trillion times with `*`; such a
//! template can exhaust memory or time before any limit above applies.

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
/// Most items a filter may be asked to build or walk (`batch`/`slice` counts, `join` items):
/// minijinja's own limit for `range`.
pub const MAX_ITEMS: usize = 100_000;

/// Guards on minijinja's filters and string methods: those whose output can dwarf their input
/// in a single step (an indent width, a join separator, a replacement, a format width, a
/// batch count) check the size they would build, and those that walk or copy their whole
/// input check its size, against [`MAX_RENDERED`] / [`MAX_ITEMS`]; each refuses with an error
/// naming the limit, else hands over to minijinja's own implementation.
mod guards {
    use minijinja::value::{Kwargs, Rest, StringInput, Value};
    use minijinja::{Error, ErrorKind, State};

    use super::{MAX_ITEMS, MAX_RENDERED};

    /// The message every guard's error carries, so `render` can name the limit.
    pub const OVER: &str = "over the chat template size limit";

    fn bytes(what: &str, n: u128) -> Result<(), Error> {
        if n > MAX_RENDERED as u128 {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{what} would build {n} bytes, {OVER} of {MAX_RENDERED}"),
            ));
        }
        Ok(())
    }

    fn items(what: &str, n: usize) -> Result<(), Error> {
        if n > MAX_ITEMS {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{what} {n} is {OVER} of {MAX_ITEMS} items"),
            ));
        }
        Ok(())
    }

    /// Bytes `s.replace(from, to)` produces (an empty `from` matches between every char).
    fn replaced_len(s: &str, from: &str, to: &str, count: Option<usize>) -> u128 {
        let mut n = if from.is_empty() {
            s.chars().count() + 1
        } else {
            s.matches(from).count()
        };
        if let Some(c) = count {
            n = n.min(c);
        }
        s.len() as u128 + n as u128 * to.len() as u128
    }

    /// Every number written in a format string (widths and precisions among them).
    fn check_format_numbers(f: &str) -> Result<(), Error> {
        for run in f.split(|c: char| !c.is_ascii_digit()) {
            if !run.is_empty() {
                let n = run.trim_start_matches('0').len();
                let value = if n > 30 {
                    u128::MAX
                } else {
                    run.parse().unwrap_or(u128::MAX)
                };
                bytes("format width", value)?;
            }
        }
        Ok(())
    }

    /// The items of `value`, at most MAX_ITEMS of them (a lazily repeated sequence may claim
    /// trillions).
    fn bounded_items(what: &str, value: &Value) -> Result<Vec<Value>, Error> {
        if let Some(n) = value.len().filter(|_| value.as_str().is_none()) {
            items(what, n)?;
        }
        let v: Vec<Value> = value.try_iter()?.take(MAX_ITEMS + 1).collect();
        items(what, v.len())?;
        Ok(v)
    }

    pub fn indent(
        value: StringInput<'_>,
        width: Option<usize>,
        indent_first_line: Option<bool>,
        indent_blank_lines: Option<bool>,
        kwargs: Kwargs,
    ) -> Result<Value, Error> {
        let w = match width {
            Some(w) => w,
            None => kwargs.get::<Option<usize>>("width")?.unwrap_or(4),
        };
        let lines = value.as_str().matches('\n').count() as u128 + 1;
        bytes("indent", value.as_str().len() as u128 + w as u128 * lines)?;
        minijinja::filters::indent(value, width, indent_first_line, indent_blank_lines, kwargs)
    }

    pub fn batch(
        state: &State,
        value: Value,
        count: usize,
        fill_with: Option<Value>,
    ) -> Result<Value, Error> {
        items("batch count", count)?;
        if value.is_undefined() || value.is_none() {
            return minijinja::filters::batch(state, value, count, fill_with);
        }
        let v = bounded_items("batch of", &value)?;
        minijinja::filters::batch(state, Value::from(v), count, fill_with)
    }

    pub fn slice(
        state: &State,
        value: Value,
        count: usize,
        fill_with: Option<Value>,
    ) -> Result<Value, Error> {
        items("slice count", count)?;
        if value.is_undefined() || value.is_none() {
            return minijinja::filters::slice(state, value, count, fill_with);
        }
        let v = bounded_items("slice of", &value)?;
        minijinja::filters::slice(state, Value::from(v), count, fill_with)
    }

    pub fn join(
        state: &State,
        value: &Value,
        joiner: Option<StringInput<'_>>,
    ) -> Result<Value, Error> {
        if value.as_str().is_some() || value.is_undefined() || value.is_none() {
            return minijinja::filters::join(state, value, joiner);
        }
        let v = bounded_items("join of", value)?;
        let sep = joiner.as_ref().map_or(0, |j| j.as_str().len()) as u128;
        bytes("join", sep * v.len().saturating_sub(1) as u128)?;
        minijinja::filters::join(state, &Value::from(v), joiner)
    }

    pub fn replace(
        state: &State,
        value: StringInput<'_>,
        from: StringInput<'_>,
        to: StringInput<'_>,
    ) -> Result<Value, Error> {
        bytes(
            "replace",
            replaced_len(value.as_str(), from.as_str(), to.as_str(), None),
        )?;
        minijinja::filters::replace(state, value, from, to)
    }

    pub fn format(state: &State, format_str: &Value, args: Rest<Value>) -> Result<Value, Error> {
        if let Some(f) = format_str.as_str() {
            check_format_numbers(f)?;
        }
        minijinja::filters::format(state, format_str, args)
    }

    /// Checks one input of a filter that walks or copies its whole input: a string of at
    /// most MAX_RENDERED bytes, a sequence or map of at most MAX_ITEMS items. (A sequence
    /// repeated with `*` is lazy and may claim trillions of items.)
    fn check_input(filter: &str, v: &Value) -> Result<(), Error> {
        if let Some(s) = v.as_str() {
            return bytes(&format!("{filter} of a string that"), s.len() as u128);
        }
        if v.as_object().is_some() {
            if let Some(n) = v.len() {
                return items(&format!("{filter} input of"), n);
            }
        }
        Ok(())
    }

    /// `original` (a built-in filter) with every input checked by [`check_input`] first.
    pub fn walking(
        name: &'static str,
        original: Value,
    ) -> impl Fn(&State, Rest<Value>) -> Result<Value, Error> + Send + Sync + 'static {
        move |state: &State, args: Rest<Value>| {
            for a in args.iter() {
                check_input(name, a)?;
            }
            original.call(state, &args)
        }
    }

    /// Python string methods (minijinja-contrib's pycompat), with `replace`, `join` and
    /// `format` checked first.
    pub fn methods(
        state: &State,
        value: &Value,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        if let Some(s) = value.as_str() {
            match (method, args) {
                ("replace", [from, to, rest @ ..]) => {
                    if let (Some(from), Some(to)) = (from.as_str(), to.as_str()) {
                        let count = rest
                            .first()
                            .and_then(|c| i64::try_from(c.clone()).ok())
                            .and_then(|c| usize::try_from(c).ok());
                        bytes("replace", replaced_len(s, from, to, count))?;
                    }
                }
                ("join", [seq]) => {
                    let v = bounded_items("join of", seq)?;
                    bytes("join", s.len() as u128 * v.len().saturating_sub(1) as u128)?;
                    return minijinja_contrib::pycompat::unknown_method_callback(
                        state,
                        value,
                        method,
                        &[Value::from(v)],
                    );
                }
                ("format", _) => check_format_numbers(s)?,
                _ => {}
            }
        }
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
    }
}

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
        env.set_unknown_method_callback(guards::methods);
        env.add_filter("indent", guards::indent);
        env.add_filter("batch", guards::batch);
        env.add_filter("slice", guards::slice);
        env.add_filter("join", guards::join);
        env.add_filter("replace", guards::replace);
        env.add_filter("format", guards::format);
        macro_rules! walking {
            ($($name:ident),*) => {$(
                env.add_filter(
                    stringify!($name),
                    guards::walking(
                        stringify!($name),
                        minijinja::Value::from_function(minijinja::filters::$name),
                    ),
                );
            )*};
        }
        walking!(
            lower, upper, title, capitalize, trim, split, lines, dictsort, items, reverse, last,
            min, max, sort, list, string, sum, select, reject, selectattr, rejectattr, map,
            groupby, unique, chain, zip, pprint
        );
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
                _ if e.detail().is_some_and(|d| d.contains(guards::OVER)) => {
                    format!("chat template exceeds a size limit: {e}")
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

    /// Fuzzer finds (chat_template target, with a dictionary of Jinja idioms): filters and
    /// string methods whose size argument asked minijinja for terabytes in one step.
    #[test]
    fn single_step_blowups_are_refused_by_name() {
        for (template, what) in [
            ("{{ 'a'|indent(99999999999) }}", "indent would build"),
            ("{{ [1]|batch(99999999999) }}", "batch count 99999999999"),
            ("{{ [1]|slice(99999999999) }}", "slice count 99999999999"),
            (
                "{{ '%999999999999s'|format(1) }}",
                "format width would build 999999999999",
            ),
            (
                "{{ '{:>999999999999}'.format(1) }}",
                "format width would build 999999999999",
            ),
            (
                "{{ range(100000)|join('x' * 99999999) }}",
                "join would build 9999899900001 bytes",
            ),
            (
                "{{ ('x' * 99999999)|replace('x', 'yy') }}",
                "replace would build",
            ),
            (
                "{{ ('x' * 99999999).replace('', 'y') }}",
                "replace would build",
            ),
            ("{{ ('x' * 9999999).join(range(100)) }}", "join would build"),
            ("{{ ([1, 2] * 1000000)|join }}", "join of 2000000 is over"),
            (
                "{{ ([1] * 1000000000000)|last }}",
                "last input of 1000000000000 is over",
            ),
            (
                "{{ ([1] * 1000000000000)|list|length }}",
                "list input of 1000000000000 is over",
            ),
            (
                "{{ ([1] * 1000000000000)|map('string')|first }}",
                "map input of 1000000000000 is over",
            ),
            (
                "{{ ('x' * 99999999)|list|length }}",
                "list of a string that would build 99999999 bytes",
            ),
        ] {
            let e = render_err(template);
            assert!(
                e.contains("exceeds a size limit") && e.contains(what),
                "{template}: {e}"
            );
        }
    }

    #[test]
    fn guarded_filters_and_methods_still_work() {
        let t = ChatTemplate::new(
            Some(concat!(
                "{{ 'a\nb'|indent(2) }}|{{ 'a\nb'|indent(width=1, first=true) }}|",
                "{{ [1, 2, 3]|batch(2)|list }}|{{ [1, 2, 3]|slice(2)|list }}|",
                "{{ [1, 2]|join(', ') }}|{{ 'abc'|replace('b', 'x') }}|{{ '%3s'|format('a') }}|",
                "{{ '-'.join(['a', 'b']) }}|{{ 'a-b-c'.replace('-', '+', 1) }}|",
                "{{ '{}!'.format('hi') }}|{{ undefined_name|join(',') }}|",
                "{{ [3, 1, 2]|sort(reverse=true) }}|{{ {'b': 1, 'a': 2}|dictsort(by='value') }}|",
                "{{ ['a', 'b']|map('upper')|list }}|{{ ' x '|trim|title }}"
            )),
            "",
            "",
        );
        assert_eq!(
            t.render(&[], false).unwrap(),
            "a\n  b| a\n b|[[1, 2], [3]]|[[1, 2], [3]]|1, 2|axc|  a|a-b|a+b-c|hi!||\
             [3, 2, 1]|[[\"b\", 1], [\"a\", 2]]|[\"A\", \"B\"]|X"
        );
    }

    #[test]
    fn oversized_template_source_is_refused() {
        let big = format!("{{# {} #}}", "x".repeat(MAX_TEMPLATE_SOURCE));
        let e = render_err(&big);
        assert!(e.contains("over the limit of 1048576"), "{e}");
    }
}
