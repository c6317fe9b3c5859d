//! Just enough of a BTF reader to find where a field lies in a kernel struct, so the kernel
//! programs can read it on any kernel build (the layout of `task_struct` depends on the
//! kernel's configuration). Format: Documentation/bpf/btf.rst.
use std::{fs, io, path::Path};

/// Errors of reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no member {member} in struct {parent}")]
    NoMember { parent: String, member: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One member of a struct or union.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

/// One type: its kind, name, the type it refers to (for modifiers and typedefs) and members.
#[derive(Debug)]
struct Type {
    kind: u32,
    name_off: u32,
    size_or_type: u32,
    members: Vec<Member>,
}

/// Parsed BTF types (ids start at 1) and their string table.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let bytes = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses raw (little- or native-endian) BTF.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let u32_at = |at: usize| -> Result<u32, BtfError> {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
                .ok_or(BtfError::Malformed("truncated"))
        };
        if bytes.get(0..2).map(|m| u16::from_ne_bytes([m[0], m[1]])) != Some(MAGIC) {
            return Err(BtfError::Malformed("bad magic (not native-endian BTF)"));
        }
        let header_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings_at = header_len + str_off;
        let strings = bytes
            .get(strings_at..strings_at + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let (mut at, end) = (header_len + type_off, header_len + type_off + type_len);
        while at < end {
            let (name_off, info, size_or_type) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            at += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let member = at + i * 12;
                        let offset = u32_at(member + 8)?;
                        members.push(Member {
                            name_off: u32_at(member)?,
                            type_id: u32_at(member + 4)?,
                            // With kind_flag, the top 8 bits hold a bitfield's size.
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(Type {
                kind,
                name_off,
                size_or_type,
                members,
            });
        }
        Ok(Self { types, strings })
    }

    /// Byte offset of `path` (e.g. `["se", "sum_exec_runtime"]`) inside struct `root`,
    /// following nested struct members; each name may also lie inside anonymous struct or
    /// union members (`sock_common.skc_num`).
    pub fn member_offset(&self, root: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut type_id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == Some(root))
            .ok_or_else(|| BtfError::NoStruct(root.into()))?;
        let (mut parent, mut bits) = (root, 0u32);
        for &wanted in path {
            let (found_bits, found_type) =
                self.find_member(type_id, wanted, 0)
                    .ok_or_else(|| BtfError::NoMember {
                        parent: parent.into(),
                        member: wanted.into(),
                    })?;
            bits += found_bits;
            type_id = found_type;
            parent = wanted;
        }
        Ok(bits / 8)
    }

    /// Whether the kernel has BTF tracepoint `name`: its `btf_trace_NAME` typedef, which is what
    /// a `tp_btf` program is loaded against.
    pub fn has_tracepoint(&self, name: &str) -> bool {
        let typedef = format!("btf_trace_{name}");
        self.types
            .iter()
            .any(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == Some(typedef.as_str()))
    }

    fn find_member(&self, type_id: usize, wanted: &str, depth: u32) -> Option<(u32, usize)> {
        if depth > 8 {
            return None;
        }
        let composite = self.resolve(type_id);
        for member in &composite.members {
            if self.name(member.name_off) == Some(wanted) {
                return Some((member.bit_offset, member.type_id as usize));
            }
        }
        for member in &composite.members {
            let anonymous = member.name_off == 0 || self.name(member.name_off) == Some("");
            if anonymous
                && let Some((bits, id)) =
                    self.find_member(member.type_id as usize, wanted, depth + 1)
            {
                return Some((member.bit_offset + bits, id));
            }
        }
        None
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: usize) -> &Type {
        loop {
            let t = &self.types[id.min(self.types.len() - 1)];
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type as usize;
                }
                _ => return t,
            }
        }
    }

    fn name(&self, offset: u32) -> Option<&str> {
        let rest = self.strings.get(offset as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF with: 1 `u64` (INT), 2 `struct sched_entity { u64 load; u64
    /// sum_exec_runtime; }`, 3 `typedef struct sched_entity se_t`, 4 `struct task_struct {
    /// int pid:4 (bitfield); se_t se at byte 16; }`, 5 `typedef u64 btf_trace_sched_switch`.
    fn sample_btf() -> Vec<u8> {
        let strings = b"\0u64\0sched_entity\0load\0sum_exec_runtime\0se_t\0task_struct\0pid\0se\0btf_trace_sched_switch\0";
        let at = |name: &str| {
            let needle = [name.as_bytes(), b"\0"].concat();
            (1 + strings[1..]
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("name")) as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_ne_bytes()));
        push(&[at("u64"), KIND_INT << 24, 8, 64]);
        push(&[at("sched_entity"), KIND_STRUCT << 24 | 2, 16]);
        push(&[at("load"), 1, 0, at("sum_exec_runtime"), 1, 64]);
        push(&[at("se_t"), KIND_TYPEDEF << 24, 2]);
        push(&[at("task_struct"), 1 << 31 | KIND_STRUCT << 24 | 2, 32]);
        push(&[at("pid"), 1, 4 << 24, at("se"), 3, 128]);
        push(&[at("btf_trace_sched_switch"), KIND_TYPEDEF << 24, 1]);
        let mut btf = Vec::new();
        btf.extend(MAGIC.to_ne_bytes());
        btf.extend([1u8, 0]);
        for word in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            btf.extend(word.to_ne_bytes());
        }
        btf.extend(types);
        btf.extend(strings);
        btf
    }

    #[test]
    fn nested_member_offset_through_a_typedef() {
        let btf = Btf::parse(&sample_btf()).expect("parses");
        assert_eq!(
            btf.member_offset("task_struct", &["se", "sum_exec_runtime"])
                .unwrap(),
            24
        );
        assert_eq!(btf.member_offset("task_struct", &["pid"]).unwrap(), 0);
    }

    #[test]
    fn missing_struct_or_member_is_named() {
        let btf = Btf::parse(&sample_btf()).expect("parses");
        let error = btf.member_offset("rq", &["clock"]).unwrap_err().to_string();
        assert_eq!(error, "the kernel's BTF has no struct rq");
        let error = btf
            .member_offset("task_struct", &["se", "vruntime"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "the kernel's BTF has no member vruntime in struct se"
        );
    }

    #[test]
    fn tracepoints_are_found_by_their_typedef() {
        let btf = Btf::parse(&sample_btf()).expect("parses");
        assert!(btf.has_tracepoint("sched_switch"));
        assert!(!btf.has_tracepoint("sock_recv_length"));
        assert!(
            !btf.has_tracepoint("se_t"),
            "only btf_trace_ typedefs count"
        );
    }

    #[test]
    fn garbage_is_rejected_not_panicked_on() {
        assert!(Btf::parse(b"not btf at all").is_err());
        let mut truncated = sample_btf();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }
}
