//! Tests of [`ZipStreamWriter`] against an independent reader, the `zip` crate: small archives, an
//! archive of more than 65,535 entries, and ZIP64 archives with entries and offsets past 4 GiB. The
//! large archives live in a [`SparseArchive`], which keeps the bytes of headers and directories but
//! only the length of each run of zero entry data, so they need neither 4 GiB of memory nor of disk.

use super::*;
use std::io::{self, Read, Seek, SeekFrom};

const FOUR_GIB: u64 = 1 << 32;

/// Zero data reaches the writer in chunks of this size, as downloaded chunks do in a bundle.
const ZERO_CHUNK_SIZE: usize = 8 << 20;

fn modified() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("a valid timestamp")
}

fn build(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut writer = ZipStreamWriter::new(modified());
    let mut out = BytesMut::new();
    for (name, data) in entries {
        writer.start_entry(name, data.len() as u64, &mut out);
        for chunk in data.chunks(1000) {
            writer.write_data(chunk, &mut out);
        }
        writer.finish_entry(&mut out).unwrap();
    }
    let written = writer.bytes_written();
    writer.finish(&mut out);
    assert!(out.len() as u64 > written);
    out.to_vec()
}

/// An entry of a test archive: `head`, then `zeros` zero bytes, then `tail`.
struct TestEntry {
    name: String,
    head: Vec<u8>,
    zeros: u64,
    tail: Vec<u8>,
}

impl TestEntry {
    /// An entry holding `content`.
    fn small(name: &str, content: &[u8]) -> Self {
        TestEntry {
            name: name.to_string(),
            head: content.to_vec(),
            zeros: 0,
            tail: Vec::new(),
        }
    }

    /// An entry of `size` bytes, zeros but for a few distinct bytes at each end, so a reader that
    /// starts or stops its data anywhere else reads different content.
    fn large(name: &str, size: u64) -> Self {
        let head: Vec<u8> = (0..1000u32).map(|index| (index % 251) as u8 + 1).collect();
        let tail = format!("the last bytes of {name}").into_bytes();
        let zeros = size - head.len() as u64 - tail.len() as u64;
        TestEntry {
            name: name.to_string(),
            head,
            zeros,
            tail,
        }
    }

    fn size(&self) -> u64 {
        self.head.len() as u64 + self.zeros + self.tail.len() as u64
    }

    fn content(&self) -> impl Read + '_ {
        self.head
            .as_slice()
            .chain(io::repeat(0).take(self.zeros))
            .chain(self.tail.as_slice())
    }

    /// The CRC-32 of the content, from the CRCs of its parts rather than by hashing every zero.
    fn crc32(&self) -> u32 {
        let mut whole = crc32fast::Hasher::new();
        whole.update(&self.head);
        whole.combine(&crc32_of_zeros(self.zeros));
        let mut tail = crc32fast::Hasher::new();
        tail.update(&self.tail);
        whole.combine(&tail);
        whole.finalize()
    }
}

/// The CRC-32 state of `count` zero bytes, combined from the states of 1, 2, 4, ... zero bytes.
fn crc32_of_zeros(count: u64) -> crc32fast::Hasher {
    let mut zeros = crc32fast::Hasher::new();
    let mut power_of_two = crc32fast::Hasher::new();
    power_of_two.update(&[0]);
    let mut remaining = count;
    while remaining > 0 {
        if remaining & 1 == 1 {
            zeros.combine(&power_of_two);
        }
        let copy = power_of_two.clone();
        power_of_two.combine(&copy);
        remaining >>= 1;
    }
    zeros
}

/// A stretch of a [`SparseArchive`].
enum Segment {
    Bytes(Vec<u8>),
    Zeros(u64),
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Bytes(bytes) => bytes.len() as u64,
            Segment::Zeros(count) => *count,
        }
    }
}

/// An archive kept as a list of segments, readable and seekable like the whole archive.
#[derive(Default)]
struct SparseArchive {
    segments: Vec<Segment>,
    /// The offset of each segment's first byte.
    segment_starts: Vec<u64>,
    len: u64,
    position: u64,
}

impl SparseArchive {
    fn append(&mut self, segment: Segment) {
        let added = segment.len();
        if added == 0 {
            return;
        }
        match (self.segments.last_mut(), segment) {
            (Some(Segment::Bytes(last)), Segment::Bytes(bytes)) => last.extend_from_slice(&bytes),
            (Some(Segment::Zeros(last)), Segment::Zeros(count)) => *last += count,
            (_, segment) => {
                self.segment_starts.push(self.len);
                self.segments.push(segment);
            }
        }
        self.len += added;
    }

    /// Moves what the writer put in `out` to the end of the archive.
    fn keep_bytes(&mut self, out: &mut BytesMut) {
        self.append(Segment::Bytes(out.to_vec()));
        out.clear();
    }

    /// Moves what the writer put in `out`, which must be the `zeros` it was just given, to the end of
    /// the archive as a run of zeros.
    fn keep_zeros(&mut self, out: &mut BytesMut, zeros: &[u8]) {
        assert!(out[..] == *zeros, "the writer must pass entry data through unchanged");
        self.append(Segment::Zeros(out.len() as u64));
        out.clear();
    }
}

impl Read for SparseArchive {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.len {
            return Ok(0);
        }
        let index = self.segment_starts.partition_point(|start| *start <= self.position) - 1;
        let skip = self.position - self.segment_starts[index];
        let count = match &self.segments[index] {
            Segment::Bytes(bytes) => (&bytes[skip as usize..]).read(buf)?,
            Segment::Zeros(zeros) => io::repeat(0).take(zeros - skip).read(buf)?,
        };
        self.position += count as u64;
        Ok(count)
    }
}

impl Seek for SparseArchive {
    fn seek(&mut self, target: SeekFrom) -> io::Result<u64> {
        let position = match target {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = position.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before offset 0"))?;
        Ok(self.position)
    }
}

/// Writes `entries` through a [`ZipStreamWriter`], feeding zeros in chunks of [`ZERO_CHUNK_SIZE`] and
/// draining the writer's output after every call.
fn write_sparse(entries: &[TestEntry]) -> SparseArchive {
    let mut writer = ZipStreamWriter::new(modified());
    let mut archive = SparseArchive::default();
    let mut out = BytesMut::new();
    let zero_chunk = vec![0; ZERO_CHUNK_SIZE];
    for entry in entries {
        writer.start_entry(&entry.name, entry.size(), &mut out);
        writer.write_data(&entry.head, &mut out);
        archive.keep_bytes(&mut out);
        let mut zeros_left = entry.zeros;
        while zeros_left > 0 {
            let chunk = &zero_chunk[..zeros_left.min(ZERO_CHUNK_SIZE as u64) as usize];
            writer.write_data(chunk, &mut out);
            archive.keep_zeros(&mut out, chunk);
            zeros_left -= chunk.len() as u64;
        }
        writer.write_data(&entry.tail, &mut out);
        writer.finish_entry(&mut out).unwrap();
        archive.keep_bytes(&mut out);
    }
    writer.finish(&mut out);
    archive.keep_bytes(&mut out);
    archive
}

/// Checks that `actual` yields exactly the bytes of `expected`.
fn assert_same_content(mut actual: impl Read, mut expected: impl Read, size: u64, name: &str) {
    let buffer_size = size.saturating_add(1).min(1 << 20) as usize;
    let mut actual_buffer = vec![0; buffer_size];
    let mut expected_buffer = vec![0; buffer_size];
    let mut position = 0u64;
    loop {
        let count = actual
            .read(&mut actual_buffer)
            .unwrap_or_else(|error| panic!("{name}: read failed at byte {position}: {error}"));
        if count == 0 {
            let missing = expected.read(&mut expected_buffer).unwrap();
            assert_eq!(
                missing, 0,
                "{name}: the reader stopped at byte {position}, before the end"
            );
            return;
        }
        expected
            .read_exact(&mut expected_buffer[..count])
            .unwrap_or_else(|_| panic!("{name}: the reader went on past the end, at byte {position}"));
        if actual_buffer[..count] != expected_buffer[..count] {
            let first_difference = (0..count)
                .find(|index| actual_buffer[*index] != expected_buffer[*index])
                .unwrap_or_default();
            panic!("{name}: byte {} differs", position + first_difference as u64);
        }
        position += count as u64;
    }
}

/// Reads `archive` with the `zip` crate and checks that it holds exactly `entries`, in order, each
/// with its name, size, CRC-32 and content. Returns the reader for further checks.
fn assert_reads_back<R: Read + Seek>(archive: R, entries: &[TestEntry]) -> zip::ZipArchive<R> {
    let mut reader = zip::ZipArchive::new(archive).expect("the zip crate opens the archive");
    assert_eq!(reader.len(), entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let file = reader.by_index(index).unwrap();
        assert_eq!(file.name(), entry.name);
        assert_eq!(file.compression(), zip::CompressionMethod::Stored, "{}", entry.name);
        assert_eq!(file.size(), entry.size(), "{}", entry.name);
        assert_eq!(file.compressed_size(), entry.size(), "{}", entry.name);
        assert_eq!(file.crc32(), entry.crc32(), "{}", entry.name);
        // The zip crate checks the CRC-32 against the content when it reaches the end.
        assert_same_content(file, entry.content(), entry.size(), &entry.name);
    }
    reader
}

/// The 32-bit sizes of an entry's local header and the values of its ZIP64 extra field, if any.
#[derive(Debug, PartialEq, Eq)]
struct LocalHeaderFields {
    compressed_size: u32,
    size: u32,
    zip64_values: Option<Vec<u64>>,
}

/// The 32-bit sizes and local header offset of an entry's central directory header, and the values
/// of its ZIP64 extra field, if any.
#[derive(Debug, PartialEq, Eq)]
struct CentralHeaderFields {
    compressed_size: u32,
    size: u32,
    local_header_offset: u32,
    zip64_values: Option<Vec<u64>>,
}

/// Reads the header at `start` (where the `zip` crate found it): its `fixed_len` bytes, whose name
/// and extra field lengths are at `lengths_at`, then its name and extra field. Returns the fixed
/// part and the values of the ZIP64 extra field.
fn read_header(
    archive: &mut (impl Read + Seek),
    start: u64,
    fixed_len: usize,
    lengths_at: usize,
) -> (Vec<u8>, Option<Vec<u64>>) {
    let mut fixed = vec![0; fixed_len];
    archive.seek(SeekFrom::Start(start)).unwrap();
    archive.read_exact(&mut fixed).unwrap();
    let name_len = u16::from_le_bytes([fixed[lengths_at], fixed[lengths_at + 1]]) as usize;
    let extra_len = u16::from_le_bytes([fixed[lengths_at + 2], fixed[lengths_at + 3]]) as usize;
    let mut name_and_extra = vec![0; name_len + extra_len];
    archive.read_exact(&mut name_and_extra).unwrap();
    let mut extra = &name_and_extra[name_len..];
    let mut zip64_values = None;
    while let [id_low, id_high, len_low, len_high, rest @ ..] = extra {
        let (field, after) = rest.split_at(u16::from_le_bytes([*len_low, *len_high]) as usize);
        if u16::from_le_bytes([*id_low, *id_high]) == ZIP64_EXTRA_ID {
            let values = field
                .chunks_exact(8)
                .map(|value| u64::from_le_bytes(value.try_into().unwrap()));
            zip64_values = Some(values.collect());
        }
        extra = after;
    }
    (fixed, zip64_values)
}

/// Where the `zip` crate found the local and the central directory header of entry `index`.
fn header_starts<R: Read + Seek>(reader: &mut zip::ZipArchive<R>, index: usize) -> (u64, u64) {
    let entry = reader.by_index(index).unwrap();
    (entry.header_start(), entry.central_header_start())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn local_header_fields(archive: &mut (impl Read + Seek), start: u64) -> LocalHeaderFields {
    let (fixed, zip64_values) = read_header(archive, start, 30, 26);
    LocalHeaderFields {
        compressed_size: u32_at(&fixed, 18),
        size: u32_at(&fixed, 22),
        zip64_values,
    }
}

fn central_header_fields(archive: &mut (impl Read + Seek), start: u64) -> CentralHeaderFields {
    let (fixed, zip64_values) = read_header(archive, start, 46, 28);
    CentralHeaderFields {
        compressed_size: u32_at(&fixed, 20),
        size: u32_at(&fixed, 24),
        local_header_offset: u32_at(&fixed, 42),
        zip64_values,
    }
}

#[test]
fn an_independent_reader_gets_every_entry_back_byte_for_byte() {
    let first: Vec<u8> = (0..10_000u32).map(|index| (index % 251) as u8).collect();
    let second = b"second file".to_vec();
    let empty = Vec::new();
    let archive = build(&[
        ("10000.zip", first.clone()),
        ("20000.zip", second.clone()),
        ("30000.zip", empty),
    ]);
    let mut reader = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    assert_eq!(reader.len(), 3);
    for (name, expected) in [("10000.zip", &first), ("20000.zip", &second)] {
        let mut entry = reader.by_name(name).unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(&content, expected);
    }
    assert_eq!(reader.by_name("30000.zip").unwrap().size(), 0);
}

#[test]
fn a_short_entry_is_reported() {
    let mut writer = ZipStreamWriter::new(modified());
    let mut out = BytesMut::new();
    writer.start_entry("a", 10, &mut out);
    writer.write_data(b"12345", &mut out);
    assert_eq!(
        writer.finish_entry(&mut out),
        Err(SizeMismatch {
            name: "a".into(),
            expected: 10,
            actual: 5
        })
    );
}

#[test]
fn an_empty_archive_is_valid() {
    let archive = build(&[]);
    assert_eq!(zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap().len(), 0);
}

#[test]
fn an_archive_of_more_than_65535_entries_reads_back_with_every_entry() {
    let entries: Vec<TestEntry> = (0..65_537u32)
        .map(|index| TestEntry::small(&format!("{index:05}.zip"), format!("entry {index}").as_bytes()))
        .collect();
    let archive = write_sparse(&entries);
    let reader = assert_reads_back(archive, &entries);
    assert!(
        reader.zip64_comment().is_some(),
        "the count is read from the ZIP64 end record"
    );
}

#[test]
fn an_entry_over_4_gib_reads_back_whole_and_so_do_the_entries_after_it() {
    let entries = [
        TestEntry::small("before.txt", b"the entry before"),
        TestEntry::large("over-4-gib.bin", FOUR_GIB + 12_345),
        TestEntry::small("after.txt", b"the entry after"),
    ];
    let archive = write_sparse(&entries);
    let mut reader = assert_reads_back(archive, &entries);
    assert!(reader.by_index(2).unwrap().header_start() > FOUR_GIB);
    assert!(reader.central_directory_start() > FOUR_GIB);
    assert!(reader.zip64_comment().is_some());
}

#[test]
fn an_entry_of_exactly_0xffffffff_bytes_and_the_entry_after_it_give_every_size_and_offset_in_zip64_fields() {
    let size = u32::MAX as u64;
    let entries = [
        TestEntry::large("exactly-0xffffffff.bin", size),
        TestEntry::small("after.txt", b"the entry after"),
    ];
    let mut reader = assert_reads_back(write_sparse(&entries), &entries);
    let (exact_local_header, exact_central_header) = header_starts(&mut reader, 0);
    let (after_local_header, after_central_header) = header_starts(&mut reader, 1);
    let mut archive = reader.into_inner();
    // 0xFFFFFFFF in a 32-bit field means "see the ZIP64 field": strict readers (Go's archive/zip)
    // reject an archive where that field is missing. Info-ZIP's unzip also reads the local ZIP64
    // sizes of an entry of this size (it tested the entry as empty when they were zeros), and
    // expects sizes in the next entry's ZIP64 field (it lost that entry when the field held only
    // its offset).
    assert_eq!(
        local_header_fields(&mut archive, exact_local_header),
        LocalHeaderFields {
            compressed_size: u32::MAX,
            size: u32::MAX,
            zip64_values: Some(vec![size, size]),
        }
    );
    assert_eq!(
        central_header_fields(&mut archive, exact_central_header),
        CentralHeaderFields {
            compressed_size: u32::MAX,
            size: u32::MAX,
            local_header_offset: u32::MAX,
            zip64_values: Some(vec![size, size, 0]),
        }
    );
    assert_eq!(
        central_header_fields(&mut archive, after_central_header),
        CentralHeaderFields {
            compressed_size: u32::MAX,
            size: u32::MAX,
            local_header_offset: u32::MAX,
            zip64_values: Some(vec![entries[1].size(), entries[1].size(), after_local_header]),
        }
    );
}

#[test]
fn a_local_header_at_offset_0xffffffff_is_given_in_a_zip64_field() {
    let filler_name = "filler.bin";
    // The filler's local header (30 bytes and the name), data and data descriptor (16 bytes) end at
    // 0xFFFFFFFF, where the next entry's local header starts.
    let filler_size = u32::MAX as u64 - 30 - filler_name.len() as u64 - 16;
    let entries = [
        TestEntry::large(filler_name, filler_size),
        TestEntry::small("at-0xffffffff.txt", b"the entry whose header starts at 0xFFFFFFFF"),
    ];
    let mut reader = assert_reads_back(write_sparse(&entries), &entries);
    let (local_header_start, central_header_start) = header_starts(&mut reader, 1);
    assert_eq!(local_header_start, u32::MAX as u64);
    // 0xFFFFFFFF in a 32-bit offset means "see the ZIP64 field": strict readers (Go's archive/zip)
    // reject the archive if that field is missing.
    assert_eq!(
        central_header_fields(&mut reader.into_inner(), central_header_start),
        CentralHeaderFields {
            compressed_size: u32::MAX,
            size: u32::MAX,
            local_header_offset: u32::MAX,
            zip64_values: Some(vec![entries[1].size(), entries[1].size(), u32::MAX as u64]),
        }
    );
}

#[test]
fn a_central_directory_at_offset_0xffffffff_is_found_through_the_zip64_end_record() {
    let name = "ends-at-0xffffffff.bin";
    // The entry's local header (30 bytes and the name), data and data descriptor (16 bytes) end at
    // 0xFFFFFFFF, where the central directory starts.
    let entries = [TestEntry::large(name, u32::MAX as u64 - 30 - name.len() as u64 - 16)];
    let reader = assert_reads_back(write_sparse(&entries), &entries);
    assert_eq!(reader.central_directory_start(), u32::MAX as u64);
    assert!(
        reader.zip64_comment().is_some(),
        "the directory's offset is read from the ZIP64 end record"
    );
}
