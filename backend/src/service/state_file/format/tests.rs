//! The framing of state files: every way a file can be damaged, refused or dropped as documented.
use super::*;

const BLOB: &[u8] = br#"{"format":"pcierc-state","version":1,"x":[1,2,3]}"#;
const BASE: &[u8] = br#"{"obj":{"config_address":{"set":2147483744}}}"#;
const RECORDS: [&[u8]; 3] = [
    br#"{"obj":{"generation":{"set":3}}}"#,
    br#"{"obj":{"x":{"str":[[4,"beef"]]}}}"#,
    br#"{"obj":{"generation":{"set":4}}}"#,
];

fn journal_file() -> (Vec<u8>, Vec<usize>) {
    let mut file = encode_base(0x1234_5678, BASE);
    let mut starts = Vec::new();
    for r in RECORDS {
        starts.push(file.len());
        file.extend(encode_record(r));
    }
    (file, starts)
}

fn journal(bytes: &[u8]) -> Result<Journal<'_>, FormatError> {
    match decode(bytes)? {
        Decoded::Journal(j) => Ok(j),
        other => panic!("not a journal: {other:?}"),
    }
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn a_version_1_file_decodes_to_its_blob() {
    let file = encode_whole(BLOB);
    let start = format!("pcierc-state-file 1 len={} crc32=", BLOB.len());
    assert!(file.starts_with(start.as_bytes()));
    assert_eq!(
        decode(&file),
        Ok(Decoded::Whole {
            blob: BLOB,
            legacy: false
        })
    );
}

#[test]
fn a_journal_decodes_to_its_base_and_records() {
    let (file, _) = journal_file();
    let text = String::from_utf8(file.clone()).unwrap();
    assert!(text.starts_with("pcierc-state-file 2 len="), "{text}");
    assert!(text.contains("\nrecord len=32 crc32="), "{text}");
    assert_eq!(
        journal(&file),
        Ok(Journal {
            power_on: 0x1234_5678,
            base: BASE,
            records: RECORDS.to_vec(),
            torn: None,
        })
    );
}

#[test]
fn every_single_bit_flip_and_every_truncation_is_refused() {
    let base_only = encode_base(7, BASE);
    for file in [encode_whole(BLOB), base_only] {
        assert_flips_and_cuts_refused(&file, file.len());
    }
}

/// Every single-bit flip of the first `upto` bytes of `file`, and every cut of it to fewer than
/// `upto` bytes, is refused.
fn assert_flips_and_cuts_refused(file: &[u8], upto: usize) {
    for i in 0..upto {
        for bit in 0..8 {
            let mut f = file.to_vec();
            f[i] ^= 1 << bit;
            assert!(decode(&f).is_err(), "bit {bit} of byte {i} flipped loaded");
        }
        assert!(decode(&file[..i]).is_err(), "cut to {i} bytes loaded");
    }
}

#[test]
fn every_bit_flip_and_truncation_of_the_base_of_a_journal_is_refused() {
    let (file, starts) = journal_file();
    assert_flips_and_cuts_refused(&file, starts[0]);
}

#[test]
fn a_cut_last_record_is_dropped_and_reported() {
    let (file, starts) = journal_file();
    let bounds: Vec<usize> = starts.iter().copied().chain([file.len()]).collect();
    for cut in starts[0]..file.len() {
        let j = journal(&file[..cut]).unwrap_or_else(|e| panic!("cut to {cut}: {e}"));
        let whole = bounds.iter().filter(|&&b| b <= cut).count() - 1;
        assert_eq!(j.records, RECORDS[..whole].to_vec(), "cut to {cut}");
        let torn_at = bounds[whole];
        assert_eq!(
            j.torn.as_ref().map(|t| (t.offset, t.len)),
            (cut > torn_at).then(|| (torn_at as u64, (cut - torn_at) as u64)),
            "cut to {cut}"
        );
    }
    // Zeros where the last record should be: a size extended before its data was written.
    let zeros = [&file[..starts[2]], &[0u8; 300][..]].concat();
    let j = journal(&zeros).unwrap();
    assert_eq!(j.records, RECORDS[..2].to_vec());
    assert_eq!(j.torn.map(|t| t.what), Some("zeros".into()));
}

#[test]
fn a_flipped_bit_in_a_record_before_the_last_is_refused() {
    let (file, starts) = journal_file();
    for i in starts[0]..starts[2] {
        for bit in 0..8 {
            let mut f = file.clone();
            f[i] ^= 1 << bit;
            assert!(
                matches!(decode(&f), Err(FormatError::Record { .. })),
                "bit {bit} of byte {i} flipped: {:?}",
                decode(&f)
            );
        }
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_is_refused_or_drops_it() {
    let (file, starts) = journal_file();
    for i in starts[2]..file.len() {
        for bit in 0..8 {
            let mut f = file.clone();
            f[i] ^= 1 << bit;
            match decode(&f) {
                Err(_) => {}
                Ok(Decoded::Journal(j)) => {
                    assert_eq!(j.records, RECORDS[..2].to_vec(), "byte {i} bit {bit}");
                    assert_eq!(j.torn.map(|t| t.offset), Some(starts[2] as u64));
                }
                Ok(other) => panic!("byte {i} bit {bit}: {other:?}"),
            }
        }
    }
}

#[test]
fn each_way_of_being_wrong_has_its_own_error() {
    let file = encode_whole(BLOB);
    assert_eq!(decode(b""), Err(FormatError::Empty));
    assert!(matches!(
        decode(&file[..file.len() - 5]),
        Err(FormatError::Truncated { expected, present })
            if expected == BLOB.len() as u64 && present == expected - 5
    ));
    assert!(matches!(
        decode(&[&file[..], b"xx"].concat()),
        Err(FormatError::Trailing { extra: 2, .. })
    ));
    let mut flipped = file.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x04;
    assert!(matches!(
        decode(&flipped),
        Err(FormatError::Checksum { .. })
    ));
    let newer = String::from_utf8(file.clone())
        .unwrap()
        .replacen(" 1 ", " 7 ", 1);
    assert_eq!(decode(newer.as_bytes()), Err(FormatError::NewerVersion(7)));
    assert!(matches!(
        decode(br#"{"name":"my-app","version":"2.0"}"#),
        Err(FormatError::ForeignJson(_))
    ));
    assert!(matches!(
        decode(br#"{"format":"qemu-vmstate"}"#),
        Err(FormatError::ForeignJson(f)) if f == "\"qemu-vmstate\""
    ));
    assert!(matches!(
        decode(b"\x7fELF\x02\x01"),
        Err(FormatError::Foreign(_))
    ));
    assert!(matches!(
        decode(&BLOB[..20]),
        Err(FormatError::BadHeader(_))
    ));
    let (journal, starts) = journal_file();
    let mut no_end = journal[..starts[0]].to_vec();
    no_end[starts[0] - 1] = b' ';
    assert_eq!(
        decode(&no_end),
        Err(FormatError::BaseEnd(BASE.len() as u64))
    );
    let mut bad_record = journal.clone();
    bad_record[starts[1] - 3] ^= 0x01;
    assert!(matches!(
        decode(&bad_record),
        Err(FormatError::Record { index: 1, offset, .. }) if offset == starts[0] as u64
    ));
}

#[test]
fn a_bare_blob_from_before_the_header_still_loads() {
    assert_eq!(
        decode(BLOB),
        Ok(Decoded::Whole {
            blob: BLOB,
            legacy: true
        })
    );
}
