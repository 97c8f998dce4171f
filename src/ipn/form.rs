//! Decoding an `application/x-www-form-urlencoded` IPN body into ordered `(name, value)`
//! pairs. Knows nothing about signatures, events or keys; it only turns bytes into strings.
//!
//! Decisions, and how they compare with PHP's `$_POST` (what Digistore24's signature is
//! defined over):
//! - Pairs are separated by `&` only (PHP's default `arg_separator.input`); empty segments
//!   (`a=1&&b=2`, a trailing `&`) are skipped. A segment without `=` is a name with an empty
//!   value. Only the first `=` splits; later ones belong to the value.
//! - `+` becomes a space and `%XX` is decoded exactly once, in names and values alike.
//! - **Invalid `%` escape** (`%`, `%4`, `%zz`): the `%` is kept literally and decoding goes
//!   on, exactly as PHP's `urldecode` does, so such a body verifies the same way it would in
//!   the reference receiver. Digistore24 always encodes `%` as `%25`, so this is logged at
//!   WARN (field name only).
//! - **UTF-8 is strict.** After decoding, every name and value must be valid UTF-8, else the
//!   body is [`IpnError::Malformed`], naming the field when its name is readable. No lossy
//!   replacement: we would otherwise sign, store and forward text that was never sent.
//! - **Empty name** (`=x`): dropped with a WARN, as PHP drops it from `$_POST`; it therefore
//!   takes no part in the signature either.
//! - Nothing is trimmed or normalised; PHP's renaming of `.` and space in names to `_` is not
//!   copied (Digistore24's names never contain them, and we want to see what was sent).
//! - **Duplicates** are kept in order (the caller decides; the event map and the signature use
//!   the last value, as PHP does) and logged at WARN once per name. **`name[...]` names**
//!   (PHP would build an array) are kept as plain names and logged at WARN.
//!
//! Log lines carry field names only, never values, and names are cut and escaped first
//! ([`loggable_name`]) because they come from the network.

use super::IpnError;
use std::borrow::Cow;
use std::collections::HashSet;

/// Longest field name (in characters) repeated in a log line or error message.
const MAX_LOGGED_NAME_CHARS: usize = 64;

/// A decoded `(name, value)` pair that borrows from the body where decoding changed nothing
/// (no `%` and no `+`), which is most of Digistore24's fields.
pub(super) type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Decode `body` into ordered pairs, keeping duplicates. See the module docs for the rules.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, IpnError> {
    let pairs = parse_pairs(body)?;
    // Duplicates are found after decoding, over borrowed names, so the common case (no
    // duplicate) copies no name. (The receipt path finds them in its sorted view instead:
    // `super::fields`.)
    let mut seen: HashSet<&str> = HashSet::with_capacity(pairs.len());
    let mut warned_duplicate: HashSet<&str> = HashSet::new();
    for (name, _) in &pairs {
        if !seen.insert(name) && warned_duplicate.insert(name) {
            warn_duplicate(name);
        }
    }
    Ok(pairs
        .into_iter()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect())
}

/// The WARN line for a name sent more than once (logged once per name).
pub(super) fn warn_duplicate(name: &str) {
    tracing::warn!(
        field = %loggable_name(name),
        "duplicate form field; the last value wins"
    );
}

/// [`parse_form`] without the duplicate check, borrowing from `body` where it can: every
/// other rule, warning and error is the same.
///
/// Speed (issue 13): the `&` are found with `memchr` (vectorised, one pass), and so are the
/// `%` and `+` (both need decoding), kept as a cursor that each piece asks in body order.
/// Within a pair (20 to 30 bytes) the first `=` and a `[` are found by plain loops, which
/// cost less there than a `memchr` call's set-up (an earlier version called `memchr` per
/// pair and per piece; a quarter of `ipn::accept`'s instructions went to parsing). The body
/// is checked for UTF-8 once as a whole: a body that is UTF-8 (every body Digistore24 sends)
/// is UTF-8 in each piece cut at `&` or `=`, as an ASCII byte never falls inside a
/// multi-byte character, so a piece that needs no decoding is borrowed without another
/// check. Only decoded pieces, and the pieces of a body that is not UTF-8, are checked one by
/// one (which names the field at fault).
pub(super) fn parse_pairs(body: &[u8]) -> Result<Vec<Pair<'_>>, IpnError> {
    let text = std::str::from_utf8(body).ok();
    let mut pairs: Vec<Pair<'_>> = Vec::with_capacity(memchr::memchr_iter(b'&', body).count() + 1);
    let mut escapes = memchr::memchr2_iter(b'%', b'+', body).peekable();
    let mut start = 0;
    let segment_ends = memchr::memchr_iter(b'&', body).chain(std::iter::once(body.len()));
    for (index, end) in segment_ends.enumerate() {
        let segment = Segment::new(body, start, end, &mut escapes);
        start = end + 1;
        add_pair(&mut pairs, body, text, &segment, index + 1)?;
    }
    Ok(pairs)
}

/// One `&`-separated piece of the body: where its name and value are, and what they hold.
struct Segment {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    name_escaped: bool,
    value_escaped: bool,
}

impl Segment {
    /// The piece `start..end` of `body`; `escapes` yields the positions of `%` and `+` in
    /// increasing order and is advanced past this piece.
    fn new(
        body: &[u8],
        start: usize,
        end: usize,
        escapes: &mut std::iter::Peekable<memchr::Memchr2<'_>>,
    ) -> Self {
        let raw = body.get(start..end).unwrap_or_default();
        let equals = raw.iter().position(|&b| b == b'=').map(|at| start + at);
        let (name, value) = match equals {
            Some(at) => (start..at, at + 1..end),
            None => (start..end, end..end),
        };
        let mut name_escaped = false;
        let mut value_escaped = false;
        while let Some(at) = escapes.next_if(|&at| at < end) {
            if at < name.end {
                name_escaped = true;
            } else {
                value_escaped = true;
            }
        }
        Segment {
            name,
            value,
            name_escaped,
            value_escaped,
        }
    }
}

/// Decodes the pair `segment` (the `position`-th `&`-separated piece of the body) and adds
/// it to `pairs`, with the module's warnings; an empty piece is skipped.
fn add_pair<'a>(
    pairs: &mut Vec<Pair<'a>>,
    body: &'a [u8],
    text: Option<&'a str>,
    segment: &Segment,
    position: usize,
) -> Result<(), IpnError> {
    if segment.name.start >= segment.value.end {
        return Ok(());
    }
    let (name, bad_name_escape) = piece(body, text, segment.name_escaped, segment.name.clone())
        .ok_or_else(|| {
            IpnError::Malformed(format!(
                "the name of field #{position} is not valid UTF-8 after percent-decoding"
            ))
        })?;
    let (value, bad_value_escape) = piece(body, text, segment.value_escaped, segment.value.clone())
        .ok_or_else(|| {
            IpnError::Malformed(format!(
                "the value of field `{}` is not valid UTF-8 after percent-decoding",
                loggable_name(&name)
            ))
        })?;

    if name.is_empty() {
        tracing::warn!(
            position,
            "form field with an empty name dropped (PHP drops it too)"
        );
        return Ok(());
    }
    if bad_name_escape || bad_value_escape {
        tracing::warn!(
            field = %loggable_name(&name),
            "invalid percent escape kept literally (as PHP does)"
        );
    }
    if name.as_bytes().contains(&b'[') {
        tracing::warn!(
            field = %loggable_name(&name),
            "array-syntax field name kept as a plain name"
        );
    }
    pairs.push((name, value));
    Ok(())
}

/// The piece of `body` at `range` percent-decoded ([`percent_decode`]) as UTF-8, borrowed
/// when nothing needed decoding (`escaped` false: no `%` or `+` in it); `None` when the
/// result is not UTF-8. `text` is the whole body when it is UTF-8 (see [`parse_pairs`]).
/// Also says whether an invalid escape was seen.
fn piece<'a>(
    body: &'a [u8],
    text: Option<&'a str>,
    escaped: bool,
    range: std::ops::Range<usize>,
) -> Option<(Cow<'a, str>, bool)> {
    let raw = body.get(range.clone())?;
    if !escaped {
        let piece = match text {
            Some(text) => text.get(range)?,
            None => std::str::from_utf8(raw).ok()?,
        };
        return Some((Cow::Borrowed(piece), false));
    }
    let (bytes, invalid_escape) = percent_decode(raw);
    String::from_utf8(bytes)
        .ok()
        .map(|s| (Cow::Owned(s), invalid_escape))
}

/// A field name made safe for a log line or an error message: at most
/// [`MAX_LOGGED_NAME_CHARS`] characters, control and non-ASCII characters escaped.
pub(super) fn loggable_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(MAX_LOGGED_NAME_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if name.chars().nth(MAX_LOGGED_NAME_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// `+` → space, `%XX` → byte (once); an invalid escape keeps its `%`. Returns the bytes and
/// whether an invalid escape was seen.
fn percent_decode(raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(raw.len());
    let mut invalid_escape = false;
    let mut rest = raw;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => out.push(b' '),
            b'%' => match decode_escape(tail) {
                Some((decoded, after)) => {
                    out.push(decoded);
                    rest = after;
                }
                None => {
                    invalid_escape = true;
                    out.push(b'%');
                }
            },
            other => out.push(other),
        }
    }
    (out, invalid_escape)
}

/// The byte encoded by the two hex digits at the start of `tail`, and what follows them.
fn decode_escape(tail: &[u8]) -> Option<(u8, &[u8])> {
    match tail {
        [high, low, after @ ..] => Some((hex_digit(*high)? << 4 | hex_digit(*low)?, after)),
        _ => None,
    }
}

pub(super) fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}
