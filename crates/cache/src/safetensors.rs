//! The safetensors header check done before a file is published: an 8-byte little-endian header
//! length, a JSON object whose tensors' `data_offsets` lie inside the data section, cover it without
//! overlap, and match their dtype and shape.

use serde_json::Value;

/// The largest header accepted (the reference implementation's limit is 100 MB).
pub const MAX_HEADER: u64 = 100_000_000;

fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// Length of the header that follows the first 8 bytes, checked against the file size.
pub fn header_len(first8: [u8; 8], file_size: u64) -> Result<u64, String> {
    let n = u64::from_le_bytes(first8);
    if n > MAX_HEADER {
        return Err(format!("header length {n} is over the {MAX_HEADER}-byte limit"));
    }
    if n + 8 > file_size {
        return Err(format!("header length {n} runs past the end of the {file_size}-byte file"));
    }
    Ok(n)
}

/// Checks the header JSON against the size of the data section.
pub fn check_header(header: &[u8], data_len: u64) -> Result<usize, String> {
    if header.first() != Some(&b'{') {
        return Err("the header does not start with '{'".to_owned());
    }
    let text = std::str::from_utf8(header).map_err(|e| format!("the header is not UTF-8 ({e})"))?;
    let json: serde_json::Map<String, Value> = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| format!("the header is not a JSON object ({e})"))?;
    let mut ranges = Vec::new();
    for (name, entry) in &json {
        if name == "__metadata__" {
            continue;
        }
        let dtype =
            entry.get("dtype").and_then(Value::as_str).ok_or_else(|| format!("tensor {name:?} has no dtype"))?;
        let width = dtype_bytes(dtype).ok_or_else(|| format!("tensor {name:?} has unknown dtype {dtype:?}"))?;
        let shape: Vec<u64> = entry
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|s| s.iter().map(Value::as_u64).collect())
            .ok_or_else(|| format!("tensor {name:?} has no shape of non-negative integers"))?;
        let offsets: Vec<u64> = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|s| s.iter().map(Value::as_u64).collect())
            .filter(|o: &Vec<u64>| o.len() == 2 && o[0] <= o[1])
            .ok_or_else(|| format!("tensor {name:?} has no data_offsets [begin, end]"))?;
        let elements = shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d));
        let expected = elements.and_then(|e| e.checked_mul(width));
        if expected != Some(offsets[1] - offsets[0]) {
            return Err(format!(
                "tensor {name:?}: {dtype} {shape:?} needs {} bytes but data_offsets span {}",
                expected.map_or("too many".to_owned(), |e| e.to_string()),
                offsets[1] - offsets[0]
            ));
        }
        ranges.push((offsets[0], offsets[1], name.clone()));
    }
    ranges.sort();
    let mut cursor = 0;
    for (begin, end, name) in &ranges {
        if *begin != cursor {
            return Err(format!("tensor {name:?} starts at {begin}, expected {cursor} (gap or overlap)"));
        }
        cursor = *end;
    }
    if cursor != data_len {
        return Err(format!("the tensors cover {cursor} bytes but the data section has {data_len}"));
    }
    Ok(ranges.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid file: two F16 tensors.
    fn sample() -> Vec<u8> {
        let header = br#"{"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"__metadata__":{"format":"pt"}}"#;
        let mut padded = header.to_vec();
        while !padded.len().is_multiple_of(8) {
            padded.push(b' ');
        }
        let mut out = (padded.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&padded);
        out.extend_from_slice(&[0u8; 12]);
        out
    }

    #[test]
    fn accepts_a_valid_file_and_names_what_is_wrong_otherwise() {
        let file = sample();
        let n = header_len(file[..8].try_into().unwrap(), file.len() as u64).unwrap();
        let data = file.len() as u64 - 8 - n;
        assert_eq!(check_header(&file[8..8 + n as usize], data), Ok(2));
        assert!(check_header(&file[8..8 + n as usize], data + 4).unwrap_err().contains("data section has"));
        let overlap = String::from_utf8(file[8..8 + n as usize].to_vec()).unwrap().replace("[8,12]", "[4,8]");
        assert!(check_header(overlap.as_bytes(), data).unwrap_err().contains("gap or overlap"));
        let bad_shape = String::from_utf8(file[8..8 + n as usize].to_vec()).unwrap().replace("[2,2]", "[3,2]");
        assert!(check_header(bad_shape.as_bytes(), data).unwrap_err().contains("needs 12 bytes"));
        assert!(header_len(u64::MAX.to_le_bytes(), 100).unwrap_err().contains("limit"));
        assert!(header_len(50u64.to_le_bytes(), 20).unwrap_err().contains("past the end"));
        assert!(check_header(b"[]", 0).unwrap_err().contains("'{'"));
    }
}
