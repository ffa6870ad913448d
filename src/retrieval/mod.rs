//! Retrieval: the BERT chunk embedder, KNN indexes and the neighbour query.

pub mod bert;
pub mod embedder_dir;
pub mod knn;
pub mod live;
pub mod neighbors;
