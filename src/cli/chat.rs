//! `wick chat`: an interactive conversation using the model's chat template; the session's
//! KV cache is reused across turns (only the new part of the conversation is prefilled).

use std::io::{BufRead, Write};

use clap::Args;

use super::common::ModelArgs;
use wick::formats::chat_template::ChatMessage;
use wick::runtime::{GenerateParams, SamplingParams, Session};
use wick::Result;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(short = 'n', long, default_value_t = 512)]
    pub n: usize,
    #[arg(long, default_value_t = 0.7)]
    pub temp: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let (_engine, model) = a.model.load()?;
    let tok = model.tokenizer()?;
    let mut session = Session::new(&model)?;
    let mut history = Vec::new();
    if let Some(s) = &a.system {
        history.push(ChatMessage::new("system", s.clone()));
    }
    eprintln!("wick chat: type a message, an empty line or Ctrl-D to quit");
    let stdin = std::io::stdin();
    let mut turn = 0u64;
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        history.push(ChatMessage::new("user", line.trim_end().to_string()));
        let prompt = tok.encode(&model.render_chat(&history, true)?)?;
        let params = GenerateParams {
            max_tokens: a.n,
            sampling: SamplingParams {
                temperature: a.temp,
                seed: a.seed.wrapping_add(turn),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut reply = String::new();
        {
            let mut gen = session.generate(&prompt, params)?;
            for t in gen.by_ref() {
                let t = t?;
                print!("{}", t.text);
                let _ = std::io::stdout().flush();
                reply.push_str(&t.text);
            }
            let tail = gen.flush_text();
            println!("{tail}");
            reply.push_str(&tail);
        }
        eprintln!(
            "[{} prompt tokens ({} new), {:.1} tok/s]",
            session.stats.prompt_tokens,
            session.stats.prefilled_tokens,
            session.stats.decode_tok_s()
        );
        history.push(ChatMessage::new("assistant", reply));
        turn += 1;
    }
    Ok(())
}
