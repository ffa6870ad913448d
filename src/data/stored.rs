//! Rows of a file that grows with the corpus (an index's vectors, ids and PQ codes, the chunk database,
//! a neighbour store, a `.npy`): in memory when built here, or read in place from the memory-mapped file
//! when loaded, so a loaded file costs page cache that the kernel can evict, not heap, and its size is
//! bounded by the disk, not by memory. Mutation (adding vectors to a loaded index) copies a mapped run
//! into memory first.

use memmap2::Mmap;
use std::ops::Deref;
use std::sync::Arc;

#[cfg(target_endian = "big")]
compile_error!("index and .npy files are little-endian and are read in place");

#[derive(Debug, Clone)]
pub enum Stored<T: bytemuck::Pod> {
    Owned(Vec<T>),
    /// `len` values at byte `at` of `map` (aligned for T: checked by `mapped`).
    Mapped {
        map: Arc<Mmap>,
        at: usize,
        len: usize,
    },
}

impl<T: bytemuck::Pod> Stored<T> {
    /// `len` values at byte `at` of `map`, read in place; a copy where `at` is not aligned for T.
    pub fn mapped(map: &Arc<Mmap>, at: usize, len: usize) -> Self {
        let bytes = &map[at..at + len * std::mem::size_of::<T>()];
        if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) == 0 {
            Stored::Mapped { map: map.clone(), at, len }
        } else {
            Stored::Owned(bytemuck::pod_collect_to_vec(bytes))
        }
    }

    /// The values, as a vector to change (a mapped run is copied into memory first).
    pub fn to_mut(&mut self) -> &mut Vec<T> {
        if let Stored::Mapped { .. } = self {
            *self = Stored::Owned(self.to_vec());
        }
        match self {
            Stored::Owned(v) => v,
            Stored::Mapped { .. } => unreachable!("copied above"),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Stored::Mapped { .. })
    }
}

impl<T: bytemuck::Pod> Default for Stored<T> {
    fn default() -> Self {
        Stored::Owned(Vec::new())
    }
}

impl<T: bytemuck::Pod> From<Vec<T>> for Stored<T> {
    fn from(v: Vec<T>) -> Self {
        Stored::Owned(v)
    }
}

impl<T: bytemuck::Pod> Deref for Stored<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Stored::Owned(v) => v,
            Stored::Mapped { map, at, len } => bytemuck::cast_slice(&map[*at..*at + len * std::mem::size_of::<T>()]),
        }
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for Stored<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_runs_read_in_place_or_copied_when_unaligned_and_copy_on_write() {
        let dir = std::env::temp_dir().join(format!("retro-stored-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        let values: Vec<f32> = (0..10).map(|i| i as f32 * 0.5).collect();
        let mut bytes = vec![7u8];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(&path, &bytes).unwrap();
        let map = Arc::new(unsafe { Mmap::map(&std::fs::File::open(&path).unwrap()).unwrap() });
        // Byte 1 is not aligned for f32: copied; byte 0 as u8 is read in place.
        let unaligned = Stored::<f32>::mapped(&map, 1, 10);
        assert!(!unaligned.is_mapped());
        assert_eq!(&unaligned[..], &values[..]);
        let mut raw = Stored::<u8>::mapped(&map, 0, bytes.len());
        assert!(raw.is_mapped());
        assert_eq!(&raw[..], &bytes[..]);
        raw.to_mut().push(9);
        assert!(!raw.is_mapped());
        assert_eq!(raw.len(), bytes.len() + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
