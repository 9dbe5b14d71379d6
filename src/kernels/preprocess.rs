//! The WGSL preprocessor: a line-based subset of C's, enough for one source to carry a
//! kernel's variants and for kernels to share pieces.
//!
//! - `#ifdef NAME` / `#ifndef NAME` / `#else` / `#endif`: keep or drop lines.
//! - `#define NAME` sets a flag; `#define NAME VALUE` a value, and from then on every
//!   occurrence of `NAME` as a whole identifier in a kept line (comments included) is replaced
//!   by `VALUE`. No function-like macros, no token pasting: plain identifier-boundary text
//!   substitution, applied once (a value's own defines are substituted when it is defined).
//!   Redefining a name with another value, or a flag as a value, is an error.
//! - The caller's defines are `NAME` (a flag) or `NAME=VALUE`.
//! - `#include "file"` expands `wgsl/file.wgsl` in place, once per expansion (a second include
//!   of the same file is skipped). `#include "file" A=x B=y` is an instantiation of a
//!   template: it defines `A` and `B` (single-token values, themselves substituted) for that
//!   file only and expands it every time, so one template can be included several times with
//!   different parameters (see `wgsl/wg_reduce.wgsl`). A parameter may not shadow a define.
//!
//! Defines set by a `#define` hold for the rest of the expansion, includes and includer alike.
//! Any other `#` directive is an error.

use super::wgsl_source;
use crate::error::{Error, Result};

/// Expands `#include`, `#define`, `#ifdef`, `#ifndef`, `#else`, `#endif` in the WGSL family
/// `family` (a file stem under `wgsl/`) with the given defines (`NAME` or `NAME=VALUE`).
pub fn preprocess(family: &str, defines: &[&str]) -> Result<String> {
    let src = wgsl_source(family).ok_or_else(|| Error::Shader {
        family: family.into(),
        message: "no such WGSL family".into(),
    })?;
    expand_source(family, src, defines, &wgsl_source)
}

/// [`preprocess`] of `src` with includes looked up by `resolve`.
fn expand_source(
    family: &str,
    src: &str,
    defines: &[&str],
    resolve: &dyn Fn(&str) -> Option<&'static str>,
) -> Result<String> {
    let mut x = Expander {
        family,
        resolve,
        defines: Vec::new(),
        included: Vec::new(),
        out: String::with_capacity(src.len() + 1024),
    };
    for d in defines {
        let (name, value) = match d.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (d.trim(), None),
        };
        x.define(name, value)
            .map_err(|m| x.error(family, None, format!("define {d:?}: {m}")))?;
    }
    x.expand(family, src, 0)?;
    Ok(x.out)
}

struct Define {
    name: String,
    /// None for a flag.
    value: Option<String>,
}

struct Expander<'a> {
    family: &'a str,
    resolve: &'a dyn Fn(&str) -> Option<&'static str>,
    defines: Vec<Define>,
    /// Files already included without parameters.
    included: Vec<String>,
    out: String,
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

impl Expander<'_> {
    fn error(&self, file: &str, line: Option<usize>, message: String) -> Error {
        let at = match line {
            Some(l) if file == self.family => format!("line {}: ", l + 1),
            Some(l) => format!("{file}.wgsl line {}: ", l + 1),
            None => String::new(),
        };
        Error::Shader {
            family: self.family.into(),
            message: format!("{at}{message}"),
        }
    }

    fn find(&self, name: &str) -> Option<&Define> {
        self.defines.iter().find(|d| d.name == name)
    }

    fn define(&mut self, name: &str, value: Option<String>) -> std::result::Result<(), String> {
        if !is_identifier(name) {
            return Err(format!("{name:?} is not an identifier"));
        }
        if let Some(old) = self.find(name) {
            if old.value == value {
                return Ok(());
            }
            let show =
                |v: &Option<String>| v.as_deref().map_or("a flag".into(), |v| format!("{v:?}"));
            return Err(format!(
                "{name} redefined as {} (was {})",
                show(&value),
                show(&old.value)
            ));
        }
        self.defines.push(Define {
            name: name.to_string(),
            value,
        });
        Ok(())
    }

    /// `text` with every whole-identifier occurrence of a value define replaced by its value.
    fn substitute(&self, text: &str) -> String {
        if self.defines.iter().all(|d| d.value.is_none()) {
            return text.to_string();
        }
        let b = text.as_bytes();
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < b.len() {
            if !word(b[i]) {
                // Copy up to the next word byte (ASCII, so a char boundary).
                let j = b[i..]
                    .iter()
                    .position(|&c| word(c))
                    .map_or(b.len(), |p| i + p);
                out.push_str(&text[i..j]);
                i = j;
                continue;
            }
            let j = b[i..]
                .iter()
                .position(|&c| !word(c))
                .map_or(b.len(), |p| i + p);
            let tok = &text[i..j];
            // A run starting with a digit is a number literal (`256u`), never a name.
            match self.find(tok).and_then(|d| d.value.as_deref()) {
                Some(v) if !b[i].is_ascii_digit() => out.push_str(v),
                _ => out.push_str(tok),
            }
            i = j;
        }
        out
    }

    fn expand(&mut self, file: &str, src: &str, depth: u32) -> Result<()> {
        if depth > 8 {
            return Err(self.error(file, None, "#include nested too deeply".into()));
        }
        // Per open #ifdef: (this branch active, some branch of it taken).
        let mut stack: Vec<(bool, bool)> = Vec::new();
        let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(a, _)| *a);
        for (ln, line) in src.lines().enumerate() {
            let t = line.trim_start();
            if !t.starts_with('#') {
                if active(&stack) {
                    let s = self.substitute(line);
                    self.out.push_str(&s);
                }
                // Inactive lines stay as empty lines.
                self.out.push('\n');
                continue;
            }
            let err = |x: &Self, m: String| x.error(file, Some(ln), m);
            if let Some(rest) = t.strip_prefix("#ifdef ") {
                let on = self.find(rest.trim()).is_some();
                stack.push((on, on));
            } else if let Some(rest) = t.strip_prefix("#ifndef ") {
                let on = self.find(rest.trim()).is_none();
                stack.push((on, on));
            } else if t.starts_with("#else") {
                let top = stack
                    .last_mut()
                    .ok_or_else(|| err(self, "#else without #ifdef".into()))?;
                *top = (!top.1, true);
            } else if t.starts_with("#endif") {
                stack
                    .pop()
                    .ok_or_else(|| err(self, "#endif without #ifdef".into()))?;
            } else if let Some(rest) = t.strip_prefix("#define ") {
                if active(&stack) {
                    let rest = rest.trim();
                    let (name, value) = match rest.split_once(char::is_whitespace) {
                        Some((n, v)) => (n, Some(self.substitute(v.trim()))),
                        None => (rest, None),
                    };
                    self.define(name, value).map_err(|m| err(self, m))?;
                }
                self.out.push('\n');
            } else if let Some(rest) = t.strip_prefix("#include ") {
                if active(&stack) {
                    self.include(file, ln, rest, depth)?;
                }
            } else {
                return Err(err(self, format!("unknown directive {t:?}")));
            }
        }
        if !stack.is_empty() {
            return Err(self.error(file, None, "unterminated #ifdef".into()));
        }
        Ok(())
    }

    /// `#include "name"` or `#include "name" A=x B=y` (the text after `#include `).
    fn include(&mut self, file: &str, ln: usize, rest: &str, depth: u32) -> Result<()> {
        let err = |x: &Self, m: String| x.error(file, Some(ln), m);
        let rest = rest.trim();
        let (name, args) = rest
            .strip_prefix('"')
            .and_then(|r| r.split_once('"'))
            .ok_or_else(|| err(self, format!("#include {rest:?}: expected \"file\"")))?;
        let src = (self.resolve)(name)
            .ok_or_else(|| err(self, format!("#include of unknown file {name:?}")))?;
        let mut params = Vec::new();
        for arg in args.split_whitespace() {
            let (p, v) = arg
                .split_once('=')
                .filter(|(p, v)| is_identifier(p) && !v.is_empty())
                .ok_or_else(|| {
                    err(
                        self,
                        format!("#include {name:?}: argument {arg:?} is not NAME=VALUE"),
                    )
                })?;
            if self.find(p).is_some() {
                return Err(err(
                    self,
                    format!("#include {name:?}: parameter {p} shadows a define"),
                ));
            }
            params.push((p.to_string(), self.substitute(v)));
        }
        if params.is_empty() {
            if self.included.iter().any(|n| n == name) {
                return Ok(());
            }
            self.included.push(name.to_string());
            return self.expand(name, src, depth + 1);
        }
        for (p, v) in &params {
            self.define(p, Some(v.clone())).map_err(|m| err(self, m))?;
        }
        let result = self.expand(name, src, depth + 1);
        self.defines
            .retain(|d| !params.iter().any(|(p, _)| *p == d.name));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expands `src` with `files` as the includable sources.
    fn run(src: &str, defines: &[&str], files: &[(&'static str, &'static str)]) -> Result<String> {
        let files = files.to_vec();
        expand_source("test", src, defines, &move |n| {
            files.iter().find(|(f, _)| *f == n).map(|(_, s)| *s)
        })
    }

    /// The non-empty lines of an expansion, trimmed.
    fn lines(s: &str) -> Vec<&str> {
        s.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
    }

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn flags_select_branches() {
        let src = "#ifdef A\na\n#else\nnot_a\n#endif\n#ifndef B\nnot_b\n#endif\n#define B\n#ifdef B\nb\n#endif";
        assert_eq!(lines(&run(src, &["A"], &[]).unwrap()), ["a", "not_b", "b"]);
        assert_eq!(lines(&run(src, &[], &[]).unwrap()), ["not_a", "not_b", "b"]);
        // Nested: an inner branch of an inactive outer one stays out, #else included.
        let nested = "#ifdef A\n#ifdef B\nab\n#else\na_only\n#endif\n#endif\nend";
        assert_eq!(lines(&run(nested, &["B"], &[]).unwrap()), ["end"]);
        assert_eq!(lines(&run(nested, &["A"], &[]).unwrap()), ["a_only", "end"]);
        // A #define in an inactive branch defines nothing.
        let dead = "#ifdef A\n#define C\n#endif\n#ifdef C\nc\n#endif";
        assert!(lines(&run(dead, &[], &[]).unwrap()).is_empty());
    }

    #[test]
    fn values_replace_whole_identifiers_only() {
        let src = "#define N 4u\nlet a = N + NN + N_1 + xN + N2 + (N) + 0xN + N;";
        assert_eq!(
            lines(&run(src, &[], &[]).unwrap()),
            ["let a = 4u + NN + N_1 + xN + N2 + (4u) + 0xN + 4u;"]
        );
        // From the caller; #ifdef sees a valued define; comments are substituted too.
        let src = "#ifdef WG\n@workgroup_size(WG) // WG lanes\n#endif";
        assert_eq!(
            lines(&run(src, &["WG=64u"], &[]).unwrap()),
            ["@workgroup_size(64u) // 64u lanes"]
        );
        // A value is expanded once, when it is defined: later defines do not reach into it.
        let src = "#define A 1u\n#define B A + C\n#define C 2u\nB";
        assert_eq!(lines(&run(src, &[], &[]).unwrap()), ["1u + C"]);
        // Inactive lines are dropped, not substituted.
        let src = "#define X y\n#ifdef Z\nX\n#endif\nX";
        assert_eq!(lines(&run(src, &[], &[]).unwrap()), ["y"]);
    }

    #[test]
    fn redefinition_must_agree() {
        assert_eq!(
            lines(&run("#define A 1\n#define A 1\nA", &[], &[]).unwrap()),
            ["1"]
        );
        assert_eq!(
            lines(&run("#define F\n#define F\nF", &["F"], &[]).unwrap()),
            ["F"]
        );
        let e = message(run("#define A 1\n#define A 2", &[], &[]).unwrap_err());
        assert!(e.contains("line 2") && e.contains("A redefined"), "{e}");
        let e = message(run("#define A 1", &["A"], &[]).unwrap_err());
        assert!(e.contains("A redefined as \"1\" (was a flag)"), "{e}");
        let e = message(run("", &["A=1", "A=2"], &[]).unwrap_err());
        assert!(e.contains("A redefined"), "{e}");
        let e = message(run("", &["1A=2"], &[]).unwrap_err());
        assert!(e.contains("not an identifier"), "{e}");
        let e = message(run("#define x-y 1", &[], &[]).unwrap_err());
        assert!(e.contains("not an identifier"), "{e}");
    }

    #[test]
    fn includes_expand_once_and_templates_per_use() {
        let files = [
            ("lib", "fn lib() {}"),
            ("tpl", "fn NAME(v: T) -> T { return v; }"),
            ("uses_lib", "#include \"lib\"\nfn uses() {}"),
        ];
        let src = "#include \"lib\"\n#include \"uses_lib\"\n#include \"lib\"\n\
                   #include \"tpl\" NAME=id_f32 T=f32\n#include \"tpl\" NAME=id_u32 T=u32\nNAME T";
        assert_eq!(
            lines(&run(src, &[], &files).unwrap()),
            [
                "fn lib() {}",
                "fn uses() {}",
                "fn id_f32(v: f32) -> f32 { return v; }",
                "fn id_u32(v: u32) -> u32 { return v; }",
                // The parameters end with their include.
                "NAME T",
            ]
        );
        // A parameter's value sees the includer's defines.
        let src = "#define TY vec2<u32>\n#include \"tpl\" NAME=id T=TY";
        assert_eq!(
            lines(&run(src, &[], &files).unwrap()),
            ["fn id(v: vec2<u32>) -> vec2<u32> { return v; }"]
        );
        let bad = |src: &str| message(run(src, &["T"], &files).unwrap_err());
        assert!(bad("#include \"tpl\" NAME=x T=f32").contains("parameter T shadows a define"));
        assert!(bad("#include \"tpl\" NAME").contains("\"NAME\" is not NAME=VALUE"));
        assert!(bad("#include \"nope\"").contains("unknown file \"nope\""));
        assert!(bad("#include tpl").contains("expected \"file\""));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let e = message(run("a\n#pragma once", &[], &[]).unwrap_err());
        assert!(
            e.contains("line 2: unknown directive \"#pragma once\""),
            "{e}"
        );
        // Inside an include the file is named.
        let e = message(run("#include \"inc\"", &[], &[("inc", "x\n#if A")]).unwrap_err());
        assert!(e.contains("inc.wgsl line 2: unknown directive"), "{e}");
        assert!(message(run("#ifdef A\nx", &[], &[]).unwrap_err()).contains("unterminated"));
        assert!(message(run("#endif", &[], &[]).unwrap_err()).contains("#endif without"));
        assert!(message(run("#else", &[], &[]).unwrap_err()).contains("#else without"));
        // A chain of includes deeper than 8.
        let chain: Vec<(&'static str, &'static str)> = (0..12)
            .map(|i| {
                let name: &'static str = Box::leak(format!("f{i}").into_boxed_str());
                let src: &'static str =
                    Box::leak(format!("#include \"f{}\"", i + 1).into_boxed_str());
                (name, src)
            })
            .collect();
        let e = message(run("#include \"f0\"", &[], &chain).unwrap_err());
        assert!(e.contains("nested too deeply"), "{e}");
    }

    #[test]
    fn every_shipped_family_expands() {
        for family in super::super::wgsl_families() {
            preprocess(family, &[]).unwrap_or_else(|e| panic!("{family}: {e}"));
        }
        assert!(preprocess("no_such_family", &[]).is_err());
    }
}
