pub mod chat_template;
pub mod gguf;
pub mod gguf_writer;
pub mod hf;
pub mod tokenizer;
