//! The NumPy `.npy` format: reading precomputed embedding matrices and
//! writing the float32 vectors that views expose as sidecars.
//!
//! Only what lakemount needs: little-endian `float32`/`float64`, C order,
//! one- or two-dimensional arrays.

use crate::error::{Result, bail};

const MAGIC: &[u8] = b"\x93NUMPY";

/// A row-major float32 matrix read from an `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns (the embedding dimension).
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: Vec<f32>,
}

impl Matrix {
    /// Row `i` as a slice.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Parses an `.npy` file holding a 2-D float array (a 1-D array is one row).
pub fn read_matrix(bytes: &[u8]) -> Result<Matrix> {
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        bail!("not a NumPy .npy file (missing the \\x93NUMPY magic)");
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => bail!("unsupported .npy version {major}"),
    };
    let Some(header) = bytes.get(start..start + header_len) else {
        bail!("truncated .npy header");
    };
    let header = std::str::from_utf8(header)?;
    let descr = dict_value(header, "descr").unwrap_or_default();
    let fortran = dict_value(header, "fortran_order").unwrap_or_default();
    if fortran.starts_with("True") {
        bail!("Fortran-ordered .npy arrays are not supported; save with np.ascontiguousarray");
    }
    let shape = parse_shape(header)?;
    let (rows, cols) = match shape.as_slice() {
        [d] => (1, *d),
        [n, d] => (*n, *d),
        other => bail!("expected a 2-D array of shape (rows, dim), got shape {other:?}"),
    };
    let body = &bytes[start + header_len..];
    let count = rows * cols;
    let data: Vec<f32> = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "<f4" | "|f4" => {
            if body.len() < count * 4 {
                bail!(
                    "truncated .npy data: {} bytes for {count} float32 values",
                    body.len()
                );
            }
            body[..count * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        "<f8" => {
            if body.len() < count * 8 {
                bail!(
                    "truncated .npy data: {} bytes for {count} float64 values",
                    body.len()
                );
            }
            body[..count * 8]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect()
        }
        other => {
            bail!("unsupported .npy dtype {other}; expected float32 ('<f4') or float64 ('<f8')")
        }
    };
    Ok(Matrix { rows, cols, data })
}

fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn parse_shape(header: &str) -> Result<Vec<usize>> {
    let at = header
        .find("'shape'")
        .ok_or_else(|| crate::error::err!("no shape in .npy header"))?;
    let rest = &header[at..];
    let open = rest
        .find('(')
        .ok_or_else(|| crate::error::err!("bad shape in .npy header"))?;
    let close = rest
        .find(')')
        .ok_or_else(|| crate::error::err!("bad shape in .npy header"))?;
    rest[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| crate::error::err!("bad shape entry {s:?}"))
        })
        .collect()
}

/// Encodes rows of equal length as a 2-D float32 `.npy`, shape (rows, dim).
pub fn write_matrix(rows: &[Vec<f32>]) -> Vec<u8> {
    let dim = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    write_shaped(&flat, &format!("({}, {dim})", rows.len()))
}

/// Encodes a 1-D float32 vector as `.npy` (version 1.0, 64-byte aligned header).
pub fn write_vector(v: &[f32]) -> Vec<u8> {
    write_shaped(v, &format!("({},)", v.len()))
}

fn write_shaped(v: &[f32], shape: &str) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(unpadded + pad + v.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_round_trips_through_the_reader() {
        let v = vec![1.0f32, -2.5, 3.25];
        let bytes = write_vector(&v);
        assert_eq!((bytes.len() - v.len() * 4) % 64, 0);
        let m = read_matrix(&bytes).unwrap();
        assert_eq!((m.rows, m.cols), (1, 3));
        assert_eq!(m.data, v);
    }

    #[test]
    fn rejects_garbage_and_wrong_dtypes() {
        assert!(read_matrix(b"hello").is_err());
        let mut bytes = write_vector(&[1.0]);
        let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
        bytes[at + 1] = b'i';
        assert!(
            read_matrix(&bytes)
                .unwrap_err()
                .to_string()
                .contains("dtype")
        );
    }
}
