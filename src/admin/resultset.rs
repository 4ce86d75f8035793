//! Result sets the admin console sends: RowDescription, DataRows and
//! CommandComplete in text format. Numbers are typed int8 (or numeric)
//! so that drivers hand them to tools as numbers, as PgBouncer's are.

use bytes::{BufMut, BytesMut};

/// A column's type as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Float,
}

impl Kind {
    fn oid(self) -> i32 {
        match self {
            Kind::Text => 25,
            Kind::Int => 20,
            Kind::Float => 701,
        }
    }

    fn len(self) -> i16 {
        match self {
            Kind::Text => -1,
            Kind::Int | Kind::Float => 8,
        }
    }
}

/// Columns and rows, every value as text (None: NULL).
#[derive(Debug, Default)]
pub struct ResultSet {
    columns: Vec<(&'static str, Kind)>,
    rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    pub fn new(columns: &[(&'static str, Kind)]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one value per column.
    pub fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    /// RowDescription, DataRows and CommandComplete with `tag`.
    pub fn encode(&self, buf: &mut BytesMut, tag: &str) {
        let start = buf.len();
        buf.put_u8(b'T');
        buf.put_i32(0);
        buf.put_i16(self.columns.len() as i16);
        for (name, kind) in &self.columns {
            buf.put_slice(name.as_bytes());
            buf.put_u8(0);
            buf.put_i32(0);
            buf.put_i16(0);
            buf.put_i32(kind.oid());
            buf.put_i16(kind.len());
            buf.put_i32(-1);
            buf.put_i16(0);
        }
        patch_len(buf, start);
        for row in &self.rows {
            let start = buf.len();
            buf.put_u8(b'D');
            buf.put_i32(0);
            buf.put_i16(row.len() as i16);
            for value in row {
                match value {
                    Some(v) => {
                        buf.put_i32(v.len() as i32);
                        buf.put_slice(v.as_bytes());
                    }
                    None => buf.put_i32(-1),
                }
            }
            patch_len(buf, start);
        }
        command_complete(buf, tag);
    }
}

/// CommandComplete with `tag`.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let start = buf.len();
    buf.put_u8(b'C');
    buf.put_i32(0);
    buf.put_slice(tag.as_bytes());
    buf.put_u8(0);
    patch_len(buf, start);
}

/// Writes the length of the message that starts at `start`.
fn patch_len(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start - 1) as i32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// A value for a text column.
pub fn text(v: impl std::fmt::Display) -> Option<String> {
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_description_rows_and_tag() {
        let mut rs = ResultSet::new(&[("name", Kind::Text), ("n", Kind::Int)]);
        rs.row(vec![text("a"), text(7)]);
        rs.row(vec![None, text(0)]);
        let mut buf = BytesMut::new();
        rs.encode(&mut buf, "SHOW");
        assert_eq!(buf[0], b'T');
        let t_len = i32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        let rest = &buf[1 + t_len..];
        assert_eq!(rest[0], b'D');
        let d_len = i32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        assert_eq!(&rest[5..7], &2i16.to_be_bytes());
        assert_eq!(&rest[7..11], &1i32.to_be_bytes());
        assert_eq!(rest[11], b'a');
        let rest = &rest[1 + d_len..];
        assert_eq!(rest[0], b'D');
        let d_len = i32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        assert_eq!(&rest[7..11], &(-1i32).to_be_bytes());
        let rest = &rest[1 + d_len..];
        assert_eq!(rest, b"C\0\0\0\x09SHOW\0");
    }
}
