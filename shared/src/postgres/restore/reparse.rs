//! Definitions that PostgreSQL does not read back as it printed them:
//! every deparsed expression the restore runs (indexes, constraints,
//! domains, generated columns, views, materialized views, policies,
//! trigger `WHEN` clauses, rules, the kind families' objects). Never a
//! function body, which is the user's text, not a deparsed tree.
//!
//! `col IN ('a', 'b')` on a `varchar` column is stored as an array of
//! `varchar` converted as a whole to `text[]`, which `pg_get_indexdef` and
//! `pg_get_constraintdef` print as
//! `((col)::text = ANY ((ARRAY['a'::character varying, 'b'::character varying])::text[]))`.
//! Run again, that text is parsed differently: the parser pushes the outer
//! cast into each element, `ANY (ARRAY[('a'::character varying)::text, …])`,
//! so the restored index, CHECK, view, policy, trigger or rule is printed differently from the backup's,
//! by pg_dump as by the restore's own proof (pg_dump has the same flaw).
//! Casting the array to its own element type first,
//! `(ARRAY['a'::character varying, …]::character varying[])::text[]`,
//! stops the push-down and stores the same tree as the original, which then
//! prints exactly as the backup's definition (checked on PostgreSQL 13-18).

use std::borrow::Cow;

/// `ddl` with each `ANY ((ARRAY[…])::T[])` or `ALL ((ARRAY[…])::T[])` whose
/// elements all carry the same cast to a type other than `T` given that
/// type as an array cast too; anything else is returned unchanged.
pub(super) fn as_printed(ddl: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = next_array(ddl, from) {
        from = found.after_elements;
        let Some(element_type) = common_cast(&ddl[found.elements..found.after_elements - 1]) else {
            continue;
        };
        let rest = &ddl[found.after_elements..];
        // `)::T[])`: the cast of the whole array, which must differ from the
        // elements' own type for the push-down to have changed anything.
        let Some(cast) = rest.strip_prefix(")::") else {
            continue;
        };
        let Some(end) = cast.find("[])") else {
            continue;
        };
        if cast[..end] == *element_type {
            continue;
        }
        out.push_str(&ddl[copied..found.after_elements]);
        out.push_str("::");
        out.push_str(element_type);
        out.push_str("[]");
        copied = found.after_elements;
    }
    if copied == 0 {
        Cow::Borrowed(ddl)
    } else {
        out.push_str(&ddl[copied..]);
        Cow::Owned(out)
    }
}

struct ArrayLiteral {
    /// Where the elements start (after `ARRAY[`).
    elements: usize,
    /// Just past the closing `]`.
    after_elements: usize,
}

/// The next `ANY ((ARRAY[` or `ALL ((ARRAY[` outside quotes at or after
/// `from`, with the end of its element list.
fn next_array(ddl: &str, from: usize) -> Option<ArrayLiteral> {
    let bytes = ddl.as_bytes();
    let mut i = from;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None => {
                let rest = &ddl[i..];
                if rest.starts_with("ANY ((ARRAY[") || rest.starts_with("ALL ((ARRAY[") {
                    let elements = i + "ANY ((ARRAY[".len();
                    return closing_bracket(ddl, elements).map(|close| ArrayLiteral {
                        elements,
                        after_elements: close + 1,
                    });
                }
            }
        }
        i += 1;
    }
    None
}

/// The `]` closing the bracket opened just before `start`.
fn closing_bracket(ddl: &str, start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    for (i, b) in ddl.bytes().enumerate().skip(start) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'[' | b'(' => depth += 1,
                b')' => depth = depth.checked_sub(1)?,
                b']' if depth == 0 => return Some(i),
                b']' => depth -= 1,
                _ => {}
            },
        }
    }
    None
}

/// The type every element is cast to, when each is a quoted literal with
/// the same plain cast (`'a'::character varying`): no type modifier, no
/// array, nothing else in the element.
fn common_cast(elements: &str) -> Option<&str> {
    let mut common: Option<&str> = None;
    for element in split_top_level(elements) {
        let (literal, cast) = element.rsplit_once("::")?;
        let literal = literal.strip_prefix('\'')?.strip_suffix('\'')?;
        if literal.replace("''", "").contains('\'')
            || cast.is_empty()
            || !cast
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_' || c == '.' || c == '"')
        {
            return None;
        }
        match common {
            None => common = Some(cast),
            Some(seen) if seen == cast => {}
            Some(_) => return None,
        }
    }
    common
}

/// `a, b, c` split at the commas outside quotes and brackets.
fn split_top_level(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0usize, None::<u8>, 0);
    for (i, b) in list.bytes().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'[' | b'(' => depth += 1,
                b']' | b')' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => {
                    parts.push(list[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            },
        }
    }
    parts.push(list[start..].trim());
    parts
}

#[cfg(test)]
mod tests {
    use super::as_printed;

    #[test]
    fn an_in_list_over_varchar_is_cast_to_its_own_array_type_first() {
        let index = "CREATE INDEX i ON public.t USING btree (id) WHERE ((type)::text = ANY \
                     ((ARRAY['sendEmail'::character varying, 'it''s, ]'::character varying])::text[]))";
        assert_eq!(
            as_printed(index),
            "CREATE INDEX i ON public.t USING btree (id) WHERE ((type)::text = ANY \
             ((ARRAY['sendEmail'::character varying, 'it''s, ]'::character varying]::character varying[])::text[]))"
        );
        let check = "CHECK (((a)::text <> ALL ((ARRAY['x'::character varying])::text[])) \
                     AND ((b)::text = ANY ((ARRAY['y'::bpchar, 'z'::bpchar])::text[])))";
        assert_eq!(
            as_printed(check),
            "CHECK (((a)::text <> ALL ((ARRAY['x'::character varying]::character varying[])::text[])) \
             AND ((b)::text = ANY ((ARRAY['y'::bpchar, 'z'::bpchar]::bpchar[])::text[])))"
        );
    }

    #[test]
    fn definitions_that_read_back_as_printed_are_left_alone() {
        for ddl in [
            "CHECK ((kind = ANY (ARRAY['a'::text, 'b'::text])))",
            "CHECK (((type)::text = ANY (ARRAY[('a'::character varying)::text])))",
            "CHECK ((n = ANY ((ARRAY[1, 2])::bigint[])))",
            "CHECK (((c)::text = ANY ((ARRAY['a'::character varying(3)])::text[])))",
            "CHECK ((x = ANY ((ARRAY['a'::text, 'b'::character varying])::text[])))",
            "CHECK ((note <> 'ANY ((ARRAY[''a''::character varying])::text[])'::text))",
        ] {
            assert_eq!(as_printed(ddl), ddl);
        }
    }
}
