//! Backend message framing and the few bodies the replication client reads (pure).
//!
//! We frame backend messages ourselves (tag byte, big-endian length, body) so a CopyData
//! body stays a zero-copy [`Bytes`] slice of the read buffer all the way to the decoder.
//! Frontend messages are encoded with `postgres_protocol::message::frontend`.

use bytes::{Buf, Bytes, BytesMut};

use super::error::DbError;

/// Largest backend message we accept. PostgreSQL caps a single message near 1 GiB.
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// One backend message: tag and body (without the length word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// A framing error: the stream is not PostgreSQL protocol (or is corrupt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("backend message {tag:#04x} has invalid length {len}")]
    BadLength { tag: u8, len: u32 },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
}

/// Takes one complete frame off the front of `buf`, if there is one.
/// Whether `buf` starts with a whole frame (or a malformed length, which `take_frame`
/// reports).
#[must_use]
pub fn frame_ready(buf: &[u8]) -> bool {
    if buf.len() < 5 {
        return false;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    !(4..=MAX_MESSAGE_LEN).contains(&len) || buf.len() > len
}

pub fn take_frame(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_MESSAGE_LEN {
        return Err(WireError::BadLength { tag, len });
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(5);
    Ok(Some(Frame {
        tag,
        body: frame.freeze(),
    }))
}

/// A NUL-terminated string at the front of `b`, advancing past it.
fn cstr(b: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(WireError::Malformed { what })?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

fn get_i16(b: &mut Bytes, what: &'static str) -> Result<i16, WireError> {
    if b.len() < 2 {
        return Err(WireError::Malformed { what });
    }
    Ok(b.get_i16())
}

fn get_i32(b: &mut Bytes, what: &'static str) -> Result<i32, WireError> {
    if b.len() < 4 {
        return Err(WireError::Malformed { what });
    }
    Ok(b.get_i32())
}

/// ErrorResponse ('E') and NoticeResponse ('N') bodies.
pub fn parse_error_fields(body: &Bytes) -> Result<DbError, WireError> {
    let mut b = body.clone();
    let mut e = DbError::default();
    let mut severity_localized = String::new();
    loop {
        let Some(&t) = b.first() else {
            return Err(WireError::Malformed { what: "error" });
        };
        b.advance(1);
        if t == 0 {
            break;
        }
        let v = cstr(&mut b, "error")?;
        match t {
            b'S' => severity_localized = v,
            b'V' => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    if e.severity.is_empty() {
        e.severity = severity_localized;
    }
    Ok(e)
}

/// An authentication request ('R').
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<String> },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    Other(i32),
}

pub fn parse_auth(body: &Bytes) -> Result<AuthRequest, WireError> {
    let mut b = body.clone();
    let code = get_i32(&mut b, "authentication")?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            if b.len() < 4 {
                return Err(WireError::Malformed {
                    what: "md5 authentication",
                });
            }
            AuthRequest::Md5 {
                salt: [b[0], b[1], b[2], b[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = cstr(&mut b, "SASL authentication")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(b),
        12 => AuthRequest::SaslFinal(b),
        other => AuthRequest::Other(other),
    })
}

/// ParameterStatus ('S'): name and value.
pub fn parse_parameter_status(body: &Bytes) -> Result<(String, String), WireError> {
    let mut b = body.clone();
    let name = cstr(&mut b, "ParameterStatus")?;
    let value = cstr(&mut b, "ParameterStatus")?;
    Ok((name, value))
}

/// RowDescription ('T'): column names.
pub fn parse_row_description(body: &Bytes) -> Result<Vec<String>, WireError> {
    const WHAT: &str = "RowDescription";
    let mut b = body.clone();
    let n = get_i16(&mut b, WHAT)?;
    let mut names = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        names.push(cstr(&mut b, WHAT)?);
        // table oid, column attnum, type oid, type size, type modifier, format code
        if b.len() < 18 {
            return Err(WireError::Malformed { what: WHAT });
        }
        b.advance(18);
    }
    Ok(names)
}

/// DataRow ('D') of a simple (text-format) query: one optional string per column.
pub fn parse_data_row(body: &Bytes) -> Result<Vec<Option<String>>, WireError> {
    const WHAT: &str = "DataRow";
    let mut b = body.clone();
    let n = get_i16(&mut b, WHAT)?;
    let mut values = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let len = get_i32(&mut b, WHAT)?;
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = len as usize;
        if b.len() < len {
            return Err(WireError::Malformed { what: WHAT });
        }
        values.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
        b.advance(len);
    }
    Ok(values)
}

/// BackendKeyData ('K'): the backend's process id.
pub fn parse_backend_pid(body: &Bytes) -> Result<i32, WireError> {
    let mut b = body.clone();
    get_i32(&mut b, "BackendKeyData")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use proptest::prelude::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_frame_is_ready_exactly_when_take_frame_would_return_it() {
        let wire = frame(b'd', b"wxyz");
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let ready = frame_ready(&buf);
            assert_eq!(ready, take_frame(&mut buf).unwrap().is_some(), "cut {cut}");
        }
        // A malformed length is "ready": take_frame reports it at once.
        assert!(frame_ready(&[b'd', 0, 0, 0, 1]));
    }

    #[test]
    fn frames_split_across_reads() {
        let mut wire = frame(b'd', b"wxyz");
        wire.extend(frame(b'Z', b"I"));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&wire[..3]);
        assert_eq!(take_frame(&mut buf), Ok(None));
        buf.extend_from_slice(&wire[3..]);
        let f = take_frame(&mut buf).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'd', &b"wxyz"[..]));
        let f = take_frame(&mut buf).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
        assert_eq!(take_frame(&mut buf), Ok(None));
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(take_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&[b'd', 0xff, 0, 0, 0][..]);
        assert!(take_frame(&mut buf).is_err());
    }

    #[test]
    fn parses_error_response() {
        let body = Bytes::from_static(
            b"SERROR\0VERROR\0C42704\0Mreplication slot \"x\" does not exist\0Hdo it\0\0",
        );
        let e = parse_error_fields(&body).unwrap();
        assert_eq!(e.code, "42704");
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.quoted_name(), Some("x"));
        assert_eq!(e.hint.as_deref(), Some("do it"));
        assert!(parse_error_fields(&Bytes::from_static(b"Mno end")).is_err());
    }

    #[test]
    fn parses_rows() {
        let mut t = BytesMut::new();
        t.put_i16(2);
        for name in ["systemid", "timeline"] {
            t.put_slice(name.as_bytes());
            t.put_u8(0);
            t.put_slice(&[0; 18]);
        }
        assert_eq!(
            parse_row_description(&t.freeze()).unwrap(),
            vec!["systemid".to_string(), "timeline".to_string()]
        );
        let mut d = BytesMut::new();
        d.put_i16(2);
        d.put_i32(3);
        d.put_slice(b"abc");
        d.put_i32(-1);
        assert_eq!(
            parse_data_row(&d.freeze()).unwrap(),
            vec![Some("abc".to_string()), None]
        );
    }

    #[test]
    fn parses_auth_requests() {
        let mut b = BytesMut::new();
        b.put_i32(10);
        b.put_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(
            parse_auth(&b.freeze()).unwrap(),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            }
        );
        assert_eq!(
            parse_auth(&Bytes::from_static(&[0, 0, 0, 5, 1, 2, 3, 4])).unwrap(),
            AuthRequest::Md5 { salt: [1, 2, 3, 4] }
        );
        assert!(parse_auth(&Bytes::from_static(&[0, 0, 0, 5, 1])).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let b = Bytes::from(data.clone());
            let _ = parse_error_fields(&b);
            let _ = parse_auth(&b);
            let _ = parse_parameter_status(&b);
            let _ = parse_row_description(&b);
            let _ = parse_data_row(&b);
            let _ = parse_backend_pid(&b);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = take_frame(&mut buf) {}
        }
    }
}
