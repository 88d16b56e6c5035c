//! Log entry parsing: any bytes in storage must parse or be refused, never
//! crash; and what parses must re-serialize and parse to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stackpin_core::entry::Entry;
use stackpin_core::layout;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::parse(0, data) {
        let again = Entry::parse(0, &entry.to_bytes()).expect("a parsed entry re-parses");
        assert_eq!(again, entry);
    }
    let object = bytes::Bytes::copy_from_slice(data);
    let parts = layout::split(&object);
    assert_eq!(layout::join(&parts), object);
});
