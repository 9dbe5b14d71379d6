//! `wick run`: generate from a prompt, streaming text to stdout and a summary to stderr.

use std::io::{Read, Write};

use clap::Args;
use serde_json::json;

use super::common::{parse_ids, ModelArgs};
use wick::formats::chat_template::ChatMessage;
use wick::runtime::{GenerateParams, SamplingParams, Session};
use wick::{Error, Result};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (else the positional argument, else stdin).
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// Prompt as comma-separated token ids instead of text.
    #[arg(long)]
    pub ids: Option<String>,
    /// Maximum tokens to generate.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub n: usize,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Sample on the CPU from read-back logits (the reference path) instead of on the GPU.
    #[arg(long)]
    pub cpu_sampling: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Plain completion: the prompt goes to the model as it is, without the chat template
    /// (the default wraps it as a user message when the model has a template).
    #[arg(long, conflicts_with_all = ["chat", "system"])]
    pub raw: bool,
    /// Always use a chat template, ChatML when the model has none (by default the prompt is
    /// wrapped only when the model has a template).
    #[arg(long)]
    pub chat: bool,
    /// System prompt, placed before the user's message in the chat template.
    #[arg(long, conflicts_with = "ids")]
    pub system: Option<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Prompt text.
    pub text: Option<String>,
}

pub fn run(a: RunArgs) -> Result<()> {
    let (engine, model) = a.model.load()?;
    let (prompt_ids, prompt_mode) = prompt_ids(&a, &model)?;
    let mut session = Session::new(&model)?;
    let params = GenerateParams {
        max_tokens: a.n,
        sampling: SamplingParams {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            repeat_last_n: a.repeat_last_n,
            seed: a.seed,
        },
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        sample_on_cpu: a.cpu_sampling,
    };
    let mut ids = Vec::new();
    let mut text = String::new();
    let stdout = std::io::stdout();
    {
        let mut gen = session.generate(&prompt_ids, params)?;
        for t in gen.by_ref() {
            let t = t?;
            ids.push(t.id);
            text.push_str(&t.text);
            if !a.json {
                let mut out = stdout.lock();
                let _ = out.write_all(t.text.as_bytes());
                let _ = out.flush();
            }
        }
        let tail = gen.flush_text();
        text.push_str(&tail);
        if !a.json {
            println!("{tail}");
        }
    }
    let st = &session.stats;
    let caps = &engine.gpu().caps;
    if a.json {
        println!(
            "{}",
            json!({
                "prompt_ids": prompt_ids,
                "prompt_mode": prompt_mode.name(),
                "ids": ids,
                "text": text,
                "stats": {
                    "prompt_tokens": st.prompt_tokens,
                    "generated_tokens": st.generated_tokens,
                    "prefill_tok_s": st.prefill_tok_s(),
                    "decode_tok_s": st.decode_tok_s(),
                    "submits_per_token": st.submits_per_token(),
                    "dispatches_per_token": st.dispatches_per_token(),
                    "blocking_waits_per_token": st.blocking_waits_per_token(),
                    "gpu_bound_waits_per_token": st.gpu_bound_waits_per_token(),
                    "sampler": st.sampler,
                    "kv_type": session.kv_type(),
                    "truncated_draws": st.truncated_draws,
                    "stop_reason": st.stop_reason,
                    "adapter": caps.adapter_name,
                    "backend": caps.backend.to_string(),
                    // What the model and the session hold on the GPU, and the budget.
                    "gpu_memory": engine.gpu().memory_usage(),
                }
            })
        );
    }
    eprintln!(
        "wick: prompt {} tokens, prefill {:.1} tok/s | generated {} tokens, decode {:.1} tok/s | {:.2} submits, {:.0} dispatches, {:.2} blocking waits, {:.2} GPU-bound waits per token | sampler {} | {} KV cache | {} ({})",
        st.prompt_tokens,
        st.prefill_tok_s(),
        st.generated_tokens,
        st.decode_tok_s(),
        st.submits_per_token(),
        st.dispatches_per_token(),
        st.blocking_waits_per_token(),
        st.gpu_bound_waits_per_token(),
        match st.sampler {
            Some(wick::runtime::Picker::Gpu) => "gpu",
            Some(wick::runtime::Picker::Cpu) => "cpu",
            _ => "greedy",
        },
        session.kv_type(),
        caps.adapter_name,
        caps.backend
    );
    Ok(())
}

/// How the prompt reached the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PromptMode {
    /// Token ids or text as given (`--raw`, `--ids`, or a model without a chat template).
    Raw,
    /// Wrapped in the chat template as a user message (after `--system`, if given).
    Chat,
}

impl PromptMode {
    fn name(self) -> &'static str {
        match self {
            PromptMode::Raw => "raw",
            PromptMode::Chat => "chat",
        }
    }
}

/// The prompt's token ids: `--ids` as given; text wrapped in the model's chat template unless
/// `--raw` (instruct models answer a bare prompt with end-of-turn at once, so the template is
/// the default, as in llama-cli and mlx_lm.generate), or plain when the model has none.
fn prompt_ids(a: &RunArgs, model: &wick::Model) -> Result<(Vec<u32>, PromptMode)> {
    if let Some(ids) = &a.ids {
        return Ok((parse_ids(ids)?, PromptMode::Raw));
    }
    let text = match a.prompt.clone().or(a.text.clone()) {
        Some(t) => t,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Error::io("<stdin>", e))?;
            s
        }
    };
    let tok = model.tokenizer()?;
    let templated = !a.raw && (a.chat || a.system.is_some() || model.chat_template().is_some());
    if !templated {
        return Ok((tok.encode(&text)?, PromptMode::Raw));
    }
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage::new("system", s.clone()));
    }
    messages.push(ChatMessage::new("user", text));
    let rendered = model.render_chat(&messages, true)?;
    Ok((tok.encode(&rendered)?, PromptMode::Chat))
}
