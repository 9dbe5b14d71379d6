pub mod gguf;
pub mod gguf_writer;
pub mod tokenizer;
