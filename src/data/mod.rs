//! Data: the GPT-2 tokenizer, corpora, Megatron's indexed dataset (.bin/.idx), the chunk database,
//! the sample index and the neighbour store.

pub mod chunks;
pub mod corpus;
pub mod indexed;
pub mod integrity;
pub mod samples;
pub mod tokenize;
pub mod tokenizer;
