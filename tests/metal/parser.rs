//! MSL kernel signatures: the entry points of a file, their parameters and attributes, and
//! where threadgroup memory is declared.

use crate::lexer::{matching, tokenize, Tok, Token};
use crate::preprocessor::preprocess;

/// One attribute of a `[[...]]` list: its name and argument tokens.
#[derive(Debug, Clone)]
pub(crate) struct Attr {
    pub(crate) name: String,
    pub(crate) args: Vec<Tok>,
}

/// The attribute list `[[a, b(args)]]` starting at `i`, and the index after it.
pub(crate) fn parse_attrs(t: &[Token], i: usize) -> Option<(Vec<Attr>, usize)> {
    if !(t.get(i)?.is('[') && t.get(i + 1)?.is('[')) {
        return None;
    }
    let close = matching(t, i)?;
    // `[[ ... ]]`: the inner list runs from i + 2 to the inner closing bracket.
    let inner = &t[i + 2..close.saturating_sub(1)];
    let mut attrs = Vec::new();
    let mut j = 0;
    while j < inner.len() {
        let mut name = String::new();
        // Namespaced names (`ns::name`) keep their last component.
        while j < inner.len() && !inner[j].is(',') && !inner[j].is('(') {
            if let Some(s) = inner[j].ident() {
                name = s.to_string();
            }
            j += 1;
        }
        let mut args = Vec::new();
        if j < inner.len() && inner[j].is('(') {
            let end = matching(inner, j).unwrap_or(inner.len() - 1);
            args = inner[j + 1..end].iter().map(|x| x.tok.clone()).collect();
            j = end + 1;
        }
        if !name.is_empty() {
            attrs.push(Attr { name, args });
        }
        while j < inner.len() && !inner[j].is(',') {
            j += 1;
        }
        j += 1;
    }
    Some((attrs, close + 1))
}

/// A kernel parameter: its declaration tokens (attributes removed) and attributes.
#[derive(Debug, Clone)]
pub(crate) struct Param {
    pub(crate) decl: Vec<Tok>,
    pub(crate) attrs: Vec<Attr>,
    pub(crate) line: usize,
}

impl Param {
    pub(crate) fn idents(&self) -> impl Iterator<Item = &str> {
        self.decl.iter().filter_map(|t| match t {
            Tok::Ident(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub(crate) fn name(&self) -> String {
        self.idents().last().unwrap_or("?").to_string()
    }

    pub(crate) fn address_space(&self) -> Option<&str> {
        self.idents()
            .find(|s| matches!(*s, "device" | "constant" | "threadgroup" | "thread"))
    }

    pub(crate) fn indirection(&self) -> Option<usize> {
        self.decl
            .iter()
            .position(|t| matches!(t, Tok::Punct('*') | Tok::Punct('&')))
    }

    /// Whether what the pointer or reference designates is const (`const` before the `*`).
    pub(crate) fn pointee_const(&self) -> bool {
        let end = self.indirection().unwrap_or(self.decl.len());
        self.decl[..end]
            .iter()
            .any(|t| *t == Tok::Ident("const".into()))
    }

    /// The type of a by-value parameter: its identifiers but the name and `const`.
    pub(crate) fn value_type(&self) -> Vec<&str> {
        let ids: Vec<&str> = self.idents().collect();
        ids[..ids.len().saturating_sub(1)]
            .iter()
            .copied()
            .filter(|s| *s != "const")
            .collect()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct KernelFn {
    pub(crate) name: String,
    pub(crate) line: usize,
    pub(crate) params: Vec<Param>,
    /// Function attributes (`[[max_total_threads_per_threadgroup(N)]]`).
    pub(crate) attrs: Vec<Attr>,
}

/// A parsed MSL file: its kernels, and the problems found while reading it.
pub(crate) struct MslFile {
    pub(crate) kernels: Vec<KernelFn>,
    pub(crate) problems: Vec<String>,
    /// Source positions of the `threadgroup` keywords that declare variables in kernel bodies
    /// (the host emulation makes them `static`).
    pub(crate) threadgroup_vars: Vec<usize>,
}

/// Splits the tokens of a parameter list at its top-level commas.
pub(crate) fn split_params(t: &[Token]) -> Vec<&[Token]> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (j, tk) in t.iter().enumerate() {
        match tk.tok {
            Tok::Punct('(') | Tok::Punct('[') | Tok::Punct('<') | Tok::Punct('{') => depth += 1,
            Tok::Punct(')') | Tok::Punct(']') | Tok::Punct('>') | Tok::Punct('}') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                out.push(&t[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    if start < t.len() {
        out.push(&t[start..]);
    }
    out
}

pub(crate) fn parse_param(t: &[Token]) -> Param {
    let mut decl = Vec::new();
    let mut attrs = Vec::new();
    let mut j = 0;
    while j < t.len() {
        if let Some((a, next)) = parse_attrs(t, j) {
            attrs.extend(a);
            j = next;
        } else {
            decl.push(t[j].tok.clone());
            j += 1;
        }
    }
    Param {
        decl,
        attrs,
        line: t.first().map_or(0, |x| x.line),
    }
}

/// Finds the kernel functions (`kernel void name(...) {...}` at namespace scope) and checks
/// where `threadgroup` appears: inside a kernel body anything goes; a kernel parameter may not
/// be threadgroup memory; elsewhere (helpers, file scope) only pointers and references to it.
pub(crate) fn parse_msl(src: &str) -> MslFile {
    let (t, mut problems) = preprocess(tokenize(src));
    let mut kernels = Vec::new();
    // Token ranges of kernel parameter lists and bodies.
    let mut kernel_params: Vec<(usize, usize, String)> = Vec::new();
    let mut kernel_bodies: Vec<(usize, usize)> = Vec::new();
    // Braces opened at namespace scope that are namespaces (kernels may live inside them).
    let mut scopes: Vec<bool> = Vec::new();
    let mut pending: Vec<Attr> = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let at_namespace_scope = scopes.iter().all(|ns| *ns);
        if at_namespace_scope {
            if let Some((a, next)) = parse_attrs(&t, i) {
                pending.extend(a);
                i = next;
                continue;
            }
        }
        match &t[i].tok {
            Tok::Punct('{') => {
                let is_ns = at_namespace_scope
                    && ((i >= 1 && t[i - 1].ident() == Some("namespace"))
                        || (i >= 2 && t[i - 2].ident() == Some("namespace")));
                scopes.push(is_ns);
            }
            Tok::Punct('}') => {
                scopes.pop();
                pending.clear();
            }
            Tok::Punct(';') => pending.clear(),
            Tok::Ident(s) if s == "kernel" && at_namespace_scope => {
                let line = t[i].line;
                let ok = t.get(i + 1).and_then(Token::ident) == Some("void")
                    && t.get(i + 2).and_then(Token::ident).is_some()
                    && t.get(i + 3).is_some_and(|x| x.is('('));
                if !ok {
                    problems.push(format!(
                        "line {line}: a kernel declaration this check cannot read: write each \
                         entry point out as `kernel void name(...) {{ ... }}`"
                    ));
                    i += 1;
                    continue;
                }
                let name = t[i + 2].ident().unwrap().to_string();
                let open = i + 3;
                let Some(close) = matching(&t, open) else {
                    problems.push(format!(
                        "line {line}: kernel {name}: unbalanced parentheses"
                    ));
                    break;
                };
                let mut attrs = std::mem::take(&mut pending);
                let mut j = close + 1;
                while let Some((a, next)) = parse_attrs(&t, j) {
                    attrs.extend(a);
                    j = next;
                }
                if !t.get(j).is_some_and(|x| x.is('{')) {
                    problems.push(format!(
                        "line {line}: kernel {name}: expected its body after the parameters"
                    ));
                    i = close + 1;
                    continue;
                }
                let Some(end) = matching(&t, j) else {
                    problems.push(format!("line {line}: kernel {name}: unbalanced braces"));
                    break;
                };
                let params = split_params(&t[open + 1..close])
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(parse_param)
                    .collect();
                kernel_params.push((open, close, name.clone()));
                kernel_bodies.push((j, end));
                kernels.push(KernelFn {
                    name,
                    line,
                    params,
                    attrs,
                });
                i = end + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }

    let mut threadgroup_vars = Vec::new();
    for (idx, tk) in t.iter().enumerate() {
        if tk.ident() != Some("threadgroup") {
            continue;
        }
        // Whether it qualifies a pointer or reference, not a variable.
        let indirect = t[idx + 1..]
            .iter()
            .take_while(|x| !matches!(x.tok, Tok::Punct(';' | '=' | ',' | ')' | '{' | '[')))
            .any(|x| x.is('*') || x.is('&'));
        if kernel_bodies.iter().any(|&(a, b)| a < idx && idx < b) {
            if !indirect {
                threadgroup_vars.push(tk.pos);
            }
            continue;
        }
        if let Some((_, _, name)) = kernel_params.iter().find(|(a, b, _)| *a < idx && idx < *b) {
            problems.push(format!(
                "line {}: kernel {name} takes threadgroup memory as a parameter; wgpu sets no \
                 threadgroup memory lengths for passthrough MSL: declare the array inside the \
                 kernel",
                tk.line
            ));
            continue;
        }
        // Outside kernels: a pointer or reference type is fine, a variable is not.
        if !indirect {
            problems.push(format!(
                "line {}: a threadgroup variable outside a kernel function (MSL allows them \
                 only in kernel scope; declare it in the kernel and pass a pointer)",
                tk.line
            ));
        }
    }

    let mut names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
    names.sort();
    for w in names.windows(2) {
        if w[0] == w[1] {
            problems.push(format!("kernel {} is defined twice", w[0]));
        }
    }
    MslFile {
        kernels,
        problems,
        threadgroup_vars,
    }
}
