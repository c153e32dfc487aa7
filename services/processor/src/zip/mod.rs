//! A streaming ZIP writer for already-compressed archives: entries are stored (no compression),
//! sizes and CRC follow each entry's data in a data descriptor, and only the central directory
//! (about 100 bytes per entry) stays in memory. ZIP64 records are written where sizes or offsets
//! reach 0xFFFFFFFF or the entry count 0xFFFF, so bundles of any size and any number of entries are
//! valid.

use bytes::{BufMut, BytesMut};

const LOCAL_HEADER_SIGNATURE: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR_SIGNATURE: u32 = 0x0807_4b50;
const CENTRAL_HEADER_SIGNATURE: u32 = 0x0201_4b50;
const ZIP64_END_SIGNATURE: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const END_SIGNATURE: u32 = 0x0605_4b50;
const FLAG_DATA_DESCRIPTOR: u16 = 0x0008;
const FLAG_UTF8_NAME: u16 = 0x0800;
const METHOD_STORED: u16 = 0;
const VERSION_PLAIN: u16 = 20;
const VERSION_ZIP64: u16 = 45;
const ZIP64_EXTRA_ID: u16 = 0x0001;
const U32_MARK: u32 = u32::MAX;

/// An entry's data did not match what was announced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("entry {name} announced {expected} bytes but {actual} were written")]
pub struct SizeMismatch {
    /// Entry name.
    pub name: String,
    /// Announced size.
    pub expected: u64,
    /// Bytes written.
    pub actual: u64,
}

struct CentralEntry {
    name: String,
    crc32: u32,
    size: u64,
    local_header_offset: u64,
    zip64: bool,
}

struct OpenEntry {
    name: String,
    expected_size: u64,
    hasher: crc32fast::Hasher,
    written: u64,
    local_header_offset: u64,
    zip64: bool,
}

/// Writes a ZIP archive into caller-drained buffers.
pub struct ZipStreamWriter {
    offset: u64,
    dos_time: u16,
    dos_date: u16,
    entries: Vec<CentralEntry>,
    open: Option<OpenEntry>,
}

impl ZipStreamWriter {
    /// A writer stamping every entry with `modified` as its DOS date and time.
    pub fn new(modified: chrono::DateTime<chrono::Utc>) -> Self {
        use chrono::{Datelike, Timelike};
        let year = modified.year().clamp(1980, 2107) as u16;
        let dos_date = ((year - 1980) << 9) | ((modified.month() as u16) << 5) | modified.day() as u16;
        let dos_time =
            ((modified.hour() as u16) << 11) | ((modified.minute() as u16) << 5) | (modified.second() as u16 / 2);
        ZipStreamWriter {
            offset: 0,
            dos_time,
            dos_date,
            entries: Vec::new(),
            open: None,
        }
    }

    /// Bytes produced so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Starts an entry of `expected_size` bytes.
    pub fn start_entry(&mut self, name: &str, expected_size: u64, out: &mut BytesMut) {
        assert!(self.open.is_none(), "finish the previous entry first");
        let zip64 = expected_size >= U32_MARK as u64;
        let start = out.len();
        out.put_u32_le(LOCAL_HEADER_SIGNATURE);
        out.put_u16_le(if zip64 { VERSION_ZIP64 } else { VERSION_PLAIN });
        out.put_u16_le(FLAG_DATA_DESCRIPTOR | FLAG_UTF8_NAME);
        out.put_u16_le(METHOD_STORED);
        out.put_u16_le(self.dos_time);
        out.put_u16_le(self.dos_date);
        out.put_u32_le(0); // crc32, in the data descriptor
        out.put_u32_le(if zip64 { U32_MARK } else { 0 });
        out.put_u32_le(if zip64 { U32_MARK } else { 0 });
        out.put_u16_le(name.len() as u16);
        out.put_u16_le(if zip64 { 20 } else { 0 });
        out.put_slice(name.as_bytes());
        if zip64 {
            // The announced size rather than zeros, though the data descriptor repeats it (any other
            // size fails `finish_entry`): Info-ZIP's unzip 6.0 takes an entry of exactly 0xFFFFFFFF
            // bytes for one whose size is in this field, and with zeros here tested it as empty.
            out.put_u16_le(ZIP64_EXTRA_ID);
            out.put_u16_le(16);
            out.put_u64_le(expected_size);
            out.put_u64_le(expected_size);
        }
        self.open = Some(OpenEntry {
            name: name.to_string(),
            expected_size,
            hasher: crc32fast::Hasher::new(),
            written: 0,
            local_header_offset: self.offset,
            zip64,
        });
        self.offset += (out.len() - start) as u64;
    }

    /// Appends data to the open entry.
    pub fn write_data(&mut self, data: &[u8], out: &mut BytesMut) {
        let entry = self.open.as_mut().expect("an entry is open");
        entry.hasher.update(data);
        entry.written += data.len() as u64;
        out.put_slice(data);
        self.offset += data.len() as u64;
    }

    /// Closes the open entry with its data descriptor.
    pub fn finish_entry(&mut self, out: &mut BytesMut) -> Result<(), SizeMismatch> {
        let entry = self.open.take().expect("an entry is open");
        if entry.written != entry.expected_size {
            return Err(SizeMismatch {
                name: entry.name,
                expected: entry.expected_size,
                actual: entry.written,
            });
        }
        let crc32 = entry.hasher.finalize();
        let start = out.len();
        out.put_u32_le(DATA_DESCRIPTOR_SIGNATURE);
        out.put_u32_le(crc32);
        if entry.zip64 {
            out.put_u64_le(entry.written);
            out.put_u64_le(entry.written);
        } else {
            out.put_u32_le(entry.written as u32);
            out.put_u32_le(entry.written as u32);
        }
        self.offset += (out.len() - start) as u64;
        self.entries.push(CentralEntry {
            name: entry.name,
            crc32,
            size: entry.written,
            local_header_offset: entry.local_header_offset,
            zip64: entry.zip64,
        });
        Ok(())
    }

    /// Writes the central directory and end records.
    pub fn finish(self, out: &mut BytesMut) {
        assert!(self.open.is_none(), "finish the open entry first");
        let directory_offset = self.offset;
        let start = out.len();
        for entry in &self.entries {
            // An entry that needs one ZIP64 value gives all three, sizes and offset, with each 32-bit
            // field set to 0xFFFFFFFF. Info-ZIP's unzip 6.0 decides which values a ZIP64 field holds
            // partly from the previous entry's sizes: after an entry of exactly 0xFFFFFFFF bytes it
            // read the next entry's offset-only field as sizes and failed the archive.
            let zip64 = entry.zip64 || entry.size >= U32_MARK as u64 || entry.local_header_offset >= U32_MARK as u64;
            let version = if zip64 { VERSION_ZIP64 } else { VERSION_PLAIN };
            out.put_u32_le(CENTRAL_HEADER_SIGNATURE);
            out.put_u16_le(version);
            out.put_u16_le(version);
            out.put_u16_le(FLAG_DATA_DESCRIPTOR | FLAG_UTF8_NAME);
            out.put_u16_le(METHOD_STORED);
            out.put_u16_le(self.dos_time);
            out.put_u16_le(self.dos_date);
            out.put_u32_le(entry.crc32);
            let size_field = if zip64 { U32_MARK } else { entry.size as u32 };
            out.put_u32_le(size_field);
            out.put_u32_le(size_field);
            out.put_u16_le(entry.name.len() as u16);
            out.put_u16_le(if zip64 { 4 + 24 } else { 0 });
            out.put_u16_le(0); // comment
            out.put_u16_le(0); // disk
            out.put_u16_le(0); // internal attributes
            out.put_u32_le(0); // external attributes
            out.put_u32_le(if zip64 {
                U32_MARK
            } else {
                entry.local_header_offset as u32
            });
            out.put_slice(entry.name.as_bytes());
            if zip64 {
                out.put_u16_le(ZIP64_EXTRA_ID);
                out.put_u16_le(24);
                out.put_u64_le(entry.size);
                out.put_u64_le(entry.size);
                out.put_u64_le(entry.local_header_offset);
            }
        }
        let directory_size = (out.len() - start) as u64;
        let entry_count = self.entries.len() as u64;
        let needs_zip64_end =
            entry_count >= u16::MAX as u64 || directory_size >= U32_MARK as u64 || directory_offset >= U32_MARK as u64;
        if needs_zip64_end {
            let zip64_end_offset = directory_offset + directory_size;
            out.put_u32_le(ZIP64_END_SIGNATURE);
            out.put_u64_le(44);
            out.put_u16_le(VERSION_ZIP64);
            out.put_u16_le(VERSION_ZIP64);
            out.put_u32_le(0);
            out.put_u32_le(0);
            out.put_u64_le(entry_count);
            out.put_u64_le(entry_count);
            out.put_u64_le(directory_size);
            out.put_u64_le(directory_offset);
            out.put_u32_le(ZIP64_LOCATOR_SIGNATURE);
            out.put_u32_le(0);
            out.put_u64_le(zip64_end_offset);
            out.put_u32_le(1);
        }
        out.put_u32_le(END_SIGNATURE);
        out.put_u16_le(0);
        out.put_u16_le(0);
        let count_field = entry_count.min(u16::MAX as u64) as u16;
        out.put_u16_le(count_field);
        out.put_u16_le(count_field);
        out.put_u32_le(directory_size.min(U32_MARK as u64) as u32);
        out.put_u32_le(directory_offset.min(U32_MARK as u64) as u32);
        out.put_u16_le(0);
    }
}

#[cfg(test)]
mod tests;
