//! The memory half of a snapshot, written straight from the guest's memory.
//!
//! wizer makes a snapshot in one go: it scans each memory byte by byte, copies every non-zero
//! run into a data segment of its own, then re-encodes the module and the component, so a
//! 64 MiB heap is copied four or five times into freshly allocated buffers. That was most of a
//! freeze (`rolehost-bench freeze`: a 170 ms capture of which the structure is a few ms).
//!
//! So the work is split. wizer still does the structure, which is the delicate part: it sees
//! empty memories and rewrites the component (globals set to their values, start functions
//! and instrumentation gone, the original active segments emptied). [`splice`] then writes
//! the memories into that *shape*: each instantiated module's memory section gets the
//! memories' sizes, and its data section gets one active segment per run of non-zero
//! [`CHUNK`]s, copied once from the guest's memory into the snapshot.

use std::collections::BTreeSet;
use std::ops::Range;

use wasmparser::{BinaryReader, Instance, SectionLimited, TypeRef};

/// Granularity of the zero scan. A chunk with any non-zero byte goes into a segment whole, so
/// a segment may carry up to a chunk of zeros at either end (zstd packs them to nothing); a
/// chunk of zeros is left out. Whole chunks let the scan OR bytes together, which compiles to
/// vector instructions, instead of looking for the first zero byte by byte.
const CHUNK: usize = 4096;
/// Most data segments one module gets: runs are merged past this (wizer's limit too; engines
/// cap how many segments a module may declare).
const MAX_SEGMENTS: usize = 10_000;
/// Section ids: in a component (`CORE_MODULE`, `CORE_INSTANCE`) and in a core module.
const CORE_MODULE: u8 = 1;
const CORE_INSTANCE: u8 = 2;
const IMPORT: u8 = 2;
const MEMORY: u8 = 5;
const DATA: u8 = 11;
const DATA_COUNT: u8 = 12;
/// The preamble of a component (magic, version 0x0d, layer 1) and of a core module.
const COMPONENT_PREAMBLE: [u8; 8] = *b"\0asm\x0d\0\x01\0";
const MODULE_PREAMBLE: [u8; 8] = *b"\0asm\x01\0\0\0";

/// Why a shape and its memories could not be put together. Not a guest's fault: a component
/// shape this code does not expect (wizer changed) or a memory too large to encode.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("malformed snapshot shape: {0}")]
    Malformed(String),
    #[error("the shape has {shape} memories to fill, the instance {instance}")]
    MemoryCount { shape: usize, instance: usize },
    #[error("a module of {0} bytes does not fit a section")]
    TooLarge(usize),
}

impl From<wasmparser::BinaryReaderError> for SpliceError {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        SpliceError::Malformed(e.to_string())
    }
}

/// One section: its id, and where its whole encoding (id, size, payload) and its payload are.
struct Section {
    id: u8,
    whole: Range<usize>,
    payload: Range<usize>,
}

/// The sections of a module or component after its preamble.
fn sections(bytes: &[u8], preamble: &[u8; 8]) -> Result<Vec<Section>, SpliceError> {
    if bytes.get(..8) != Some(&preamble[..]) {
        return Err(SpliceError::Malformed("unexpected preamble".into()));
    }
    let mut reader = BinaryReader::new(bytes, 0);
    reader.read_bytes(8)?;
    let mut out = Vec::new();
    while !reader.eof() {
        let start = reader.original_position();
        let id = reader.read_u8()?;
        let len = reader.read_var_u32()? as usize;
        let at = reader.original_position();
        reader.read_bytes(len)?;
        out.push(Section {
            id,
            whole: start..at + len,
            payload: at..at + len,
        });
    }
    Ok(out)
}

/// A memory of the instance, as the data segments it becomes.
struct Memory<'a> {
    bytes: &'a [u8],
    /// Runs of non-zero chunks, merged down to [`MAX_SEGMENTS`].
    runs: Vec<Range<usize>>,
}

impl<'a> Memory<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Memory {
            bytes,
            runs: runs(bytes),
        }
    }
}

/// The runs of `CHUNK`s of `bytes` holding a non-zero byte, at most [`MAX_SEGMENTS`] of them
/// (the closest runs are joined first).
fn runs(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        if chunk.iter().fold(0u8, |acc, b| acc | b) == 0 {
            continue;
        }
        let start = i * CHUNK;
        let end = start + chunk.len();
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
    // Too many: join runs across gaps below a doubling threshold. A gap is a multiple of
    // CHUNK, so this ends by the time the threshold passes the memory's size.
    let mut gap = CHUNK * 2;
    while runs.len() > MAX_SEGMENTS {
        let mut joined: Vec<Range<usize>> = Vec::with_capacity(runs.len());
        for run in runs {
            match joined.last_mut() {
                Some(last) if run.start - last.end < gap => last.end = run.end,
                _ => joined.push(run),
            }
        }
        runs = joined;
        gap *= 2;
    }
    runs
}

/// Writes `v` as an unsigned LEB128.
fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes `v` as a signed LEB128.
fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reserves five bytes for a section size known only once its payload is written.
fn reserve_size(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 5]);
    at
}

/// Fills a size reserved at `at` with the length of everything written after it, as a
/// five-byte LEB128 (padding is valid in Wasm).
fn patch_size(out: &mut [u8], at: usize) -> Result<(), SpliceError> {
    let len = out.len() - at - 5;
    let v = u32::try_from(len).map_err(|_| SpliceError::TooLarge(len))?;
    for i in 0..5 {
        let byte = ((v >> (7 * i)) & 0x7f) as u8;
        out[at + i] = if i < 4 { byte | 0x80 } else { byte };
    }
    Ok(())
}

/// Puts `memories` (each instantiated module's defined memories in order, as wizer asked for
/// them) into `shape` (wizer's snapshot made from empty memories).
pub(super) fn splice(shape: &[u8], memories: &[&[u8]]) -> Result<Vec<u8>, SpliceError> {
    let top = sections(shape, &COMPONENT_PREAMBLE)?;
    // Which modules were instantiated (wizer snapshots those, in module order).
    let mut instantiated = BTreeSet::new();
    for s in top.iter().filter(|s| s.id == CORE_INSTANCE) {
        let reader =
            SectionLimited::<Instance>::new(BinaryReader::new(&shape[s.payload.clone()], 0))?;
        for instance in reader {
            if let Instance::Instantiate { module_index, .. } = instance? {
                instantiated.insert(module_index);
            }
        }
    }

    let memories: Vec<Memory> = memories.iter().map(|m| Memory::new(m)).collect();
    let data_len: usize = memories
        .iter()
        .flat_map(|m| m.runs.iter().map(|r| r.len() + 16))
        .sum();
    let mut out = Vec::with_capacity(shape.len() + data_len);
    out.extend_from_slice(&COMPONENT_PREAMBLE);
    let mut next_memory = 0;
    let mut module_index = 0u32;
    for s in &top {
        if s.id != CORE_MODULE {
            out.extend_from_slice(&shape[s.whole.clone()]);
            continue;
        }
        let index = module_index;
        module_index += 1;
        if !instantiated.contains(&index) {
            out.extend_from_slice(&shape[s.whole.clone()]);
            continue;
        }
        out.push(CORE_MODULE);
        let size_at = reserve_size(&mut out);
        write_module(
            &mut out,
            &shape[s.payload.clone()],
            &memories,
            &mut next_memory,
        )?;
        patch_size(&mut out, size_at)?;
    }
    if next_memory != memories.len() {
        return Err(SpliceError::MemoryCount {
            shape: next_memory,
            instance: memories.len(),
        });
    }
    Ok(out)
}

/// Writes one snapshotted module with its defined memories, taken from `memories` at
/// `next`: their sizes into its memory section, their runs into its data section.
fn write_module(
    out: &mut Vec<u8>,
    module: &[u8],
    memories: &[Memory],
    next: &mut usize,
) -> Result<(), SpliceError> {
    let sections = sections(module, &MODULE_PREAMBLE)?;
    // Memory indices count imported memories first.
    let mut imported = 0u32;
    if let Some(s) = sections.iter().find(|s| s.id == IMPORT) {
        let reader =
            wasmparser::ImportSectionReader::new(BinaryReader::new(&module[s.payload.clone()], 0))?;
        for import in reader.into_imports() {
            if let TypeRef::Memory(_) = import?.ty {
                imported += 1;
            }
        }
    }
    // This module's memories, with their types: (memory index, type, contents).
    let mut mine: Vec<(u32, wasmparser::MemoryType, &Memory)> = Vec::new();
    if let Some(s) = sections.iter().find(|s| s.id == MEMORY) {
        let reader =
            wasmparser::MemorySectionReader::new(BinaryReader::new(&module[s.payload.clone()], 0))?;
        for (i, ty) in reader.into_iter().enumerate() {
            let memory = memories.get(*next).ok_or(SpliceError::MemoryCount {
                shape: *next + 1,
                instance: memories.len(),
            })?;
            *next += 1;
            mine.push((imported + i as u32, ty?, memory));
        }
    }
    let segments: usize = mine.iter().map(|(_, _, m)| m.runs.len()).sum();
    let mut wrote_data = false;

    out.extend_from_slice(&MODULE_PREAMBLE);
    for s in &sections {
        match s.id {
            MEMORY => {
                let mut section = wasm_encoder::MemorySection::new();
                for (_, ty, memory) in &mine {
                    let page = 1u64 << ty.page_size_log2.unwrap_or(16);
                    section.memory(wasm_encoder::MemoryType {
                        minimum: memory.bytes.len() as u64 / page,
                        maximum: ty.maximum,
                        memory64: ty.memory64,
                        shared: ty.shared,
                        page_size_log2: ty.page_size_log2,
                    });
                }
                out.push(MEMORY);
                wasm_encoder::Encode::encode(&section, out);
            }
            DATA_COUNT => {
                let mut reader = BinaryReader::new(&module[s.payload.clone()], 0);
                let count = u64::from(reader.read_var_u32()?);
                out.push(DATA_COUNT);
                let mut payload = Vec::new();
                uleb(&mut payload, count + segments as u64);
                uleb(out, payload.len() as u64);
                out.extend_from_slice(&payload);
            }
            DATA => {
                let payload = &module[s.payload.clone()];
                let mut reader = BinaryReader::new(payload, 0);
                let count = u64::from(reader.read_var_u32()?);
                let entries = &payload[reader.original_position()..];
                out.push(DATA);
                let size_at = reserve_size(out);
                uleb(out, count + segments as u64);
                out.extend_from_slice(entries);
                for (index, ty, memory) in &mine {
                    for run in &memory.runs {
                        write_segment(out, *index, ty.memory64, run, memory.bytes)?;
                    }
                }
                patch_size(out, size_at)?;
                wrote_data = true;
            }
            _ => out.extend_from_slice(&module[s.whole.clone()]),
        }
    }
    if segments > 0 && !wrote_data {
        // wizer always gives a snapshotted module a data section.
        return Err(SpliceError::Malformed(
            "a snapshotted module without a data section".into(),
        ));
    }
    Ok(())
}

/// One active data segment: `bytes[run]` at offset `run.start` of memory `index`.
fn write_segment(
    out: &mut Vec<u8>,
    index: u32,
    memory64: bool,
    run: &Range<usize>,
    bytes: &[u8],
) -> Result<(), SpliceError> {
    if index == 0 {
        out.push(0x00);
    } else {
        out.push(0x02);
        uleb(out, u64::from(index));
    }
    if memory64 {
        out.push(0x42); // i64.const
        sleb(out, run.start as i64);
    } else {
        let offset = u32::try_from(run.start).map_err(|_| SpliceError::TooLarge(run.start))?;
        out.push(0x41); // i32.const, whose immediate is signed
        sleb(out, i64::from(offset as i32));
    }
    out.push(0x0b); // end
    let len = u32::try_from(run.len()).map_err(|_| SpliceError::TooLarge(run.len()))?;
    uleb(out, u64::from(len));
    out.extend_from_slice(&bytes[run.clone()]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_whole_chunks_and_zero_chunks_are_left_out() {
        let mut mem = vec![0u8; CHUNK * 10];
        mem[5] = 1; // chunk 0
        mem[CHUNK + 7] = 1; // chunk 1: joins chunk 0
        mem[CHUNK * 4 + CHUNK - 1] = 9; // chunk 4
        mem[CHUNK * 9] = 3; // chunk 9, the last
        assert_eq!(
            runs(&mem),
            vec![0..CHUNK * 2, CHUNK * 4..CHUNK * 5, CHUNK * 9..CHUNK * 10]
        );
        assert!(runs(&vec![0u8; CHUNK * 3]).is_empty());
        // A memory that is not a multiple of the chunk ends with a short run.
        assert_eq!(runs(&[0, 0, 1]), vec![0..3]);
    }

    #[test]
    fn too_many_runs_are_joined_across_the_smallest_gaps() {
        // Every other chunk non-zero: twice the limit of runs.
        let n = MAX_SEGMENTS * 2;
        let mut mem = vec![0u8; CHUNK * n * 2];
        for i in 0..n {
            mem[i * 2 * CHUNK] = 1;
        }
        let runs = runs(&mem);
        assert!(runs.len() <= MAX_SEGMENTS, "{}", runs.len());
        // Every non-zero byte is still covered.
        for i in 0..n {
            let at = i * 2 * CHUNK;
            assert!(runs.iter().any(|r| r.contains(&at)), "byte {at} lost");
        }
    }

    #[test]
    fn leb128_encodings_read_back() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX)] {
            let mut out = Vec::new();
            uleb(&mut out, v);
            let mut r = BinaryReader::new(&out, 0);
            assert_eq!(u64::from(r.read_var_u32().unwrap()), v);
        }
        for v in [
            0i64,
            -1,
            63,
            64,
            -64,
            -65,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        ] {
            let mut out = Vec::new();
            sleb(&mut out, v);
            let mut r = BinaryReader::new(&out, 0);
            assert_eq!(i64::from(r.read_var_i32().unwrap()), v);
        }
        let mut out = vec![0xee];
        let at = reserve_size(&mut out);
        out.extend_from_slice(&[1; 300]);
        patch_size(&mut out, at).unwrap();
        let mut r = BinaryReader::new(&out[1..], 0);
        assert_eq!(r.read_var_u32().unwrap(), 300);
        assert_eq!(r.original_position(), 5);
    }
}
