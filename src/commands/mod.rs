//! The bodies of the `retro` commands that are more than a call into one module: the end-to-end demo,
//! sampling (generate), the golden check and `retro info`. The CLI (src/cli/, one module per command)
//! parses the arguments and calls these or the module that does the work (preprocess, train, bench).

pub mod demo;
pub mod generate;
pub mod golden;
pub mod info;
