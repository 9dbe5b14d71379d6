//! The C preprocessor subset kernel files use to generate entry points, so that the signature
//! checks read generated entries as written out.

use crate::lexer::{matching, tok_text, tokenize, Tok, Token};

/// A `#define`: parameter names for a function-like macro, and the replacement tokens.
pub(crate) struct Macro {
    pub(crate) params: Option<Vec<String>>,
    pub(crate) body: Vec<Token>,
}

/// The tokens of a directive's text, at their positions and lines in the source.
pub(crate) fn directive_tokens(text: &str, at: &Token) -> Vec<Token> {
    tokenize(text)
        .into_iter()
        .map(|t| Token {
            pos: at.pos + 1 + t.pos,
            line: at.line + t.line - 1,
            ..t
        })
        .collect()
}

/// A C preprocessor for what kernel sources use to generate entry points: object-like and
/// function-like `#define`s (with `##`), `#undef`, `#ifdef` / `#ifndef` / `#else` / `#endif`;
/// `#include` and `#pragma` are ignored. Anything else (`#if` expressions, `#` stringizing) is
/// reported, so the check never reads a signature it has not understood. Expanded tokens take
/// the line of the macro's use.
pub(crate) fn preprocess(tokens: Vec<Token>) -> (Vec<Token>, Vec<String>) {
    let mut macros: std::collections::HashMap<String, Macro> = Default::default();
    let mut problems = Vec::new();
    let mut out = Vec::new();
    // (this branch is live, some branch of this conditional was taken)
    let mut conds: Vec<(bool, bool)> = Vec::new();
    let mut run: Vec<Token> = Vec::new();
    for tk in tokens {
        let Tok::Directive(text) = &tk.tok else {
            if conds.iter().all(|c| c.0) {
                run.push(tk);
            }
            continue;
        };
        out.extend(expand(&run, &macros, &mut Vec::new(), &mut problems));
        run.clear();
        let dt = directive_tokens(text, &tk);
        let live = conds.iter().all(|c| c.0);
        let arg = dt.get(1).and_then(Token::ident).map(str::to_string);
        match dt.first().and_then(Token::ident).unwrap_or("") {
            "ifdef" | "ifndef" => {
                let defined = arg.as_ref().is_some_and(|a| macros.contains_key(a));
                let on = defined == text.trim_start().starts_with("ifdef");
                conds.push((on, on));
            }
            "else" => match conds.last_mut() {
                Some(c) => *c = (!c.1, true),
                None => problems.push(format!("line {}: #else without #if", tk.line)),
            },
            "endif" => {
                if conds.pop().is_none() {
                    problems.push(format!("line {}: #endif without #if", tk.line));
                }
            }
            "if" | "elif" => {
                if live {
                    problems.push(format!(
                        "line {}: #{} is not understood by this check (use #ifdef)",
                        tk.line,
                        dt[0].ident().unwrap()
                    ));
                }
                if dt[0].ident() == Some("if") {
                    conds.push((true, true));
                }
            }
            _ if !live => {}
            "define" => {
                let Some(name) = arg else {
                    problems.push(format!("line {}: #define without a name", tk.line));
                    continue;
                };
                // Function-like when `(` follows the name with no space between.
                let function_like = dt
                    .get(2)
                    .is_some_and(|t| t.is('(') && t.pos == dt[1].pos + name.len());
                let (params, body_start) = if function_like {
                    let close = matching(&dt, 2).unwrap_or(dt.len() - 1);
                    let names = dt[3..close]
                        .iter()
                        .filter_map(Token::ident)
                        .map(String::from);
                    (Some(names.collect()), close + 1)
                } else {
                    (None, 2)
                };
                let body = dt[body_start.min(dt.len())..].to_vec();
                macros.insert(name, Macro { params, body });
            }
            "undef" => {
                if let Some(a) = arg {
                    macros.remove(&a);
                }
            }
            "include" | "pragma" => {}
            other => problems.push(format!(
                "line {}: #{other} is not understood by this check",
                tk.line
            )),
        }
    }
    out.extend(expand(&run, &macros, &mut Vec::new(), &mut problems));
    if !conds.is_empty() {
        problems.push("unterminated #ifdef".into());
    }
    (out, problems)
}

/// Expands the macros in `t`; `disabled` holds the macros being expanded (no recursion).
pub(crate) fn expand(
    t: &[Token],
    macros: &std::collections::HashMap<String, Macro>,
    disabled: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let tk = &t[i];
        let found = tk
            .ident()
            .filter(|n| !disabled.iter().any(|d| d == n))
            .and_then(|n| macros.get(n).map(|m| (n.to_string(), m)));
        let Some((name, m)) = found else {
            out.push(tk.clone());
            i += 1;
            continue;
        };
        let at_line = |x: &Token| Token {
            line: tk.line,
            ..x.clone()
        };
        let mut body: Vec<Token> = Vec::new();
        let next = match &m.params {
            None => {
                body.extend(m.body.iter().map(at_line));
                i + 1
            }
            Some(params) => {
                let close = if t.get(i + 1).is_some_and(|x| x.is('(')) {
                    matching(t, i + 1)
                } else {
                    None
                };
                let Some(close) = close else {
                    // A function-like macro's name without arguments is just a name.
                    out.push(tk.clone());
                    i += 1;
                    continue;
                };
                let mut args: Vec<Vec<Token>> = vec![Vec::new()];
                let mut depth = 0;
                for x in &t[i + 2..close] {
                    match x.tok {
                        Tok::Punct('(') => depth += 1,
                        Tok::Punct(')') => depth -= 1,
                        Tok::Punct(',') if depth == 0 => {
                            args.push(Vec::new());
                            continue;
                        }
                        _ => {}
                    }
                    args.last_mut().unwrap().push(x.clone());
                }
                if params.is_empty() && args.len() == 1 && args[0].is_empty() {
                    args.clear();
                }
                if args.len() != params.len() {
                    problems.push(format!(
                        "line {}: macro {name} takes {} arguments, given {}",
                        tk.line,
                        params.len(),
                        args.len()
                    ));
                }
                let paste_at = |j: usize| {
                    (j >= 2 && m.body[j - 1].is('#') && m.body[j - 2].is('#'))
                        || (m.body.get(j + 1).is_some_and(|x| x.is('#'))
                            && m.body.get(j + 2).is_some_and(|x| x.is('#')))
                };
                for (j, b) in m.body.iter().enumerate() {
                    let param = b.ident().and_then(|s| params.iter().position(|p| p == s));
                    match param.and_then(|p| args.get(p)) {
                        // Arguments are expanded first, except next to `##`.
                        Some(a) if paste_at(j) => body.extend(a.iter().map(at_line)),
                        Some(a) => body.extend(expand(a, macros, disabled, problems)),
                        None => {
                            let in_paste = m.body.get(j + 1).is_some_and(|x| x.is('#'))
                                || (j >= 1 && m.body[j - 1].is('#'));
                            if b.is('#') && !in_paste {
                                problems.push(format!(
                                    "line {}: macro {name}: `#` stringizing is not understood \
                                     by this check",
                                    tk.line
                                ));
                            }
                            body.push(at_line(b));
                        }
                    }
                }
                close + 1
            }
        };
        // `a ## b`: one token from the two spellings.
        let mut pasted: Vec<Token> = Vec::new();
        let mut j = 0;
        while j < body.len() {
            if body[j].is('#') && body.get(j + 1).is_some_and(|x| x.is('#')) {
                if let (Some(left), Some(right)) = (pasted.pop(), body.get(j + 2)) {
                    let text = format!(
                        "{}{}",
                        tok_text(std::slice::from_ref(&left.tok)),
                        tok_text(std::slice::from_ref(&right.tok))
                    );
                    pasted.extend(tokenize(&text).into_iter().map(|x| Token {
                        line: left.line,
                        pos: left.pos,
                        ..x
                    }));
                }
                j += 3;
                continue;
            }
            pasted.push(body[j].clone());
            j += 1;
        }
        disabled.push(name);
        out.extend(expand(&pasted, macros, disabled, problems));
        disabled.pop();
        i = next;
    }
    out
}
