//! Retrieval: the BERT chunk embedder, KNN indexes and the neighbour query.

pub mod assignment;
pub mod bert;
pub mod embedder_dir;
pub mod index_file;
pub mod index_spec;
pub mod ivf;
pub mod ivf_pq;
pub mod kmeans;
pub mod knn;
pub mod live;
pub mod memory_budget;
pub mod neighbors;
pub mod npy;
pub mod pq;
pub mod top_k;
