pub mod gguf;
pub mod chat_template;
pub mod hf;
pub mod tokenizer;
