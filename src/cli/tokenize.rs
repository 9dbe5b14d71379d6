//! `wick tokenize`: text to ids, or ids back to text, with a model's tokenizer.

use std::path::PathBuf;

use clap::Args;

use wick::formats::gguf::GgufFile;
use wick::formats::tokenizer::Tokenizer;
use wick::{Error, Result};

#[derive(Args)]
pub struct TokenizeArgs {
    /// Model file (GGUF) or Hugging Face directory with tokenizer.json.
    #[arg(short, long)]
    model: PathBuf,
    /// Decode these comma-separated ids instead of encoding text.
    #[arg(long, value_delimiter = ',')]
    decode: Option<Vec<u32>>,
    /// Print JSON (`{"ids":[...]}` or `{"text":"..."}`).
    #[arg(long)]
    json: bool,
    /// Text to encode.
    text: Option<String>,
}

fn load(path: &std::path::Path) -> Result<Tokenizer> {
    if path.is_dir() {
        let tj = path.join("tokenizer.json");
        if !tj.exists() {
            return Err(Error::Tokenizer(format!(
                "{} has no tokenizer.json",
                path.display()
            )));
        }
        return Tokenizer::from_tokenizer_json(&tj);
    }
    let gguf = GgufFile::open(path)?;
    Tokenizer::from_gguf(&gguf)
}

pub fn run(args: TokenizeArgs) -> Result<()> {
    let tok = load(&args.model)?;
    if let Some(ids) = args.decode {
        let text = tok.decode(&ids)?;
        if args.json {
            println!("{}", serde_json::json!({ "text": text }));
        } else {
            println!("{text}");
        }
        return Ok(());
    }
    let text = args
        .text
        .ok_or_else(|| Error::InvalidArgument("give TEXT to tokenize or --decode IDS".into()))?;
    let ids = tok.encode(&text)?;
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        println!(
            "{}",
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
