//! C++ tokens: what the preprocessor, the signature parser and the emulator's code generator
//! read MSL as.

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    Num(String),
    Punct(char),
    /// A string or character literal (contents irrelevant here).
    Lit,
    /// A preprocessor line: its text after `#`, continuations joined (each backslash-newline
    /// becomes two spaces, so positions in it stay those of the source).
    Directive(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) line: usize,
    /// Index of its first character in the source.
    pub(crate) pos: usize,
}

impl Token {
    pub(crate) fn is(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }
    pub(crate) fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }
}

/// Tokens of C++ source without comments; preprocessor lines are single `Directive` tokens
/// (see [`crate::preprocessor::preprocess`]).
pub(crate) fn tokenize(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let mut line_start = true;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            line_start = true;
            i += 1;
            continue;
        }
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        if ch == '#' && line_start {
            let (start, start_line) = (i, line);
            let mut text = String::new();
            i += 1;
            while i < c.len() && c[i] != '\n' {
                if c[i] == '\\' && c.get(i + 1) == Some(&'\n') {
                    line += 1;
                    i += 2;
                    text.push_str("  ");
                    continue;
                }
                text.push(c[i]);
                i += 1;
            }
            out.push(Token {
                tok: Tok::Directive(text),
                line: start_line,
                pos: start,
            });
            continue;
        }
        line_start = false;
        if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if ch == '/' && c.get(i + 1) == Some(&'*') {
            i += 2;
            while i < c.len() && !(c[i] == '*' && c.get(i + 1) == Some(&'/')) {
                if c[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
            continue;
        }
        let (start, start_line) = (i, line);
        if ch == '"' || ch == '\'' {
            i += 1;
            while i < c.len() && c[i] != ch {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(Token {
                tok: Tok::Lit,
                line: start_line,
                pos: start,
            });
            continue;
        }
        if ch.is_ascii_alphabetic() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(c[s..i].iter().collect()),
                line,
                pos: s,
            });
            continue;
        }
        if ch.is_ascii_digit() || (ch == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let s = i;
            while i < c.len() {
                let d = c[i];
                let exp_sign = (d == '+' || d == '-') && matches!(c[i - 1], 'e' | 'E' | 'p' | 'P');
                if d.is_ascii_alphanumeric() || d == '.' || d == '_' || d == '\'' || exp_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            out.push(Token {
                tok: Tok::Num(c[s..i].iter().collect()),
                line,
                pos: s,
            });
            continue;
        }
        out.push(Token {
            tok: Tok::Punct(ch),
            line,
            pos: i,
        });
        i += 1;
    }
    out
}

/// Index of the token closing the bracket opened at `open` (`(`, `[`, `{`).
pub(crate) fn matching(t: &[Token], open: usize) -> Option<usize> {
    let (o, c) = match t[open].tok {
        Tok::Punct('(') => ('(', ')'),
        Tok::Punct('[') => ('[', ']'),
        Tok::Punct('{') => ('{', '}'),
        _ => return None,
    };
    let mut depth = 0usize;
    for (j, tk) in t.iter().enumerate().skip(open) {
        if tk.is(o) {
            depth += 1;
        } else if tk.is(c) {
            depth -= 1;
            if depth == 0 {
                return Some(j);
            }
        }
    }
    None
}

pub(crate) fn tok_text(t: &[Tok]) -> String {
    t.iter()
        .map(|x| match x {
            Tok::Ident(s) | Tok::Num(s) => s.clone(),
            Tok::Punct(c) => c.to_string(),
            Tok::Lit => "\"\"".into(),
            Tok::Directive(d) => format!("\n#{d}\n"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
pub(crate) fn tokenizer_skips_comments_strings_and_preprocessor_lines() {
    let t = tokenize(
        "#define X(a) \\\n  kernel void no()\nint a = 1; // kernel\n/* kernel\n */ \"kernel\" 1e-5f b",
    );
    let toks: Vec<Tok> = t.iter().map(|x| x.tok.clone()).collect();
    assert!(
        matches!(&toks[0], Tok::Directive(d)
            if d.starts_with("define X(a)") && d.ends_with("kernel void no()")),
        "{:?}",
        toks[0]
    );
    assert_eq!(
        toks[1..],
        [
            Tok::Ident("int".into()),
            Tok::Ident("a".into()),
            Tok::Punct('='),
            Tok::Num("1".into()),
            Tok::Punct(';'),
            Tok::Lit,
            Tok::Num("1e-5f".into()),
            Tok::Ident("b".into()),
        ]
    );
    assert_eq!(
        t.last().unwrap().line,
        5,
        "line numbers count continued and commented lines"
    );
}
