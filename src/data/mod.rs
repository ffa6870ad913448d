//! Data: the GPT-2 tokenizer, corpora, Megatron's indexed dataset (.bin/.idx), the chunk database,
//! the sample index, and rows read in place from memory-mapped files (`stored`).

pub mod chunks;
pub mod corpus;
pub mod indexed;
pub mod integrity;
pub mod samples;
pub mod stored;
pub mod tokenize;
pub mod tokenizer;
