//! `pattern` for the schema validator without a regex dependency: the
//! ECMA-262 subset that schemas use in practice, compiled to a Thompson NFA
//! and run as a Pike VM (no backtracking, so time is linear in the input
//! times the program size; no pattern can be made to take exponential time).
//!
//! Supported: literals, `.`, `^`, `$`, `\b`, `\B`, classes `[...]` / `[^...]`
//! with ranges, `\d \D \w \W \s \S`, escapes `\t \n \v \f \r \0 \xHH \uHHHH
//! \u{H…} \cX` and escaped punctuation, groups `(…)`, `(?:…)`, `(?<name>…)`,
//! alternation, quantifiers `* + ? {n} {n,} {n,m}` (greedy or lazy: the same
//! for a yes/no match). Refused: backreferences, lookaround, `\p{…}`, unknown
//! letter escapes. Matching is a search (unanchored, like `RegExp.test`),
//! over Unicode scalar values; `^`/`$` are the input's ends (no `m` flag).

/// Largest compiled program, in instructions.
const MAX_PROGRAM: usize = 10_000;
/// Largest `{n,m}` bound.
const MAX_REPEAT: u32 = 1_000;
/// Deepest group nesting.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    Digit,
    Word,
    Space,
}

impl Builtin {
    fn matches(self, c: char) -> bool {
        match self {
            Builtin::Digit => c.is_ascii_digit(),
            Builtin::Word => is_word(c),
            Builtin::Space => matches!(
                c,
                '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
                    ..='\u{200A}'
                        | '\u{2028}'
                        | '\u{2029}'
                        | '\u{202F}'
                        | '\u{205F}'
                        | '\u{3000}'
                        | '\u{FEFF}'
            ),
        }
    }
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_line_terminator(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ClassItem {
    Range(char, char),
    Builtin { kind: Builtin, negated: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Class {
    items: Vec<ClassItem>,
    negated: bool,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        let hit = self.items.iter().any(|item| match item {
            ClassItem::Range(low, high) => (*low..=*high).contains(&c),
            ClassItem::Builtin { kind, negated } => kind.matches(c) != *negated,
        });
        hit != self.negated
    }
}

#[derive(Debug, Clone)]
enum Node {
    Empty,
    Char(char),
    Any,
    Class(Class),
    Start,
    End,
    WordBoundary {
        negated: bool,
    },
    Concat(Vec<Node>),
    Alternation(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

struct Parser<'a> {
    chars: Vec<char>,
    at: usize,
    source: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.at + offset).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn fail<T>(&self, why: &str) -> Result<T, String> {
        Err(format!("pattern {:?}: {why}", self.source))
    }

    fn alternation(&mut self, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return self.fail("groups nested too deeply");
        }
        let mut branches = vec![self.concat(depth)?];
        while self.eat('|') {
            branches.push(self.concat(depth)?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Node::Empty)
        } else {
            Node::Alternation(branches)
        })
    }

    fn concat(&mut self, depth: usize) -> Result<Node, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom(depth)?;
            let atom = self.quantified(atom)?;
            items.push(atom);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    /// `{n}`, `{n,}` or `{n,m}` at the cursor, if well formed (consumed).
    fn braces(&mut self) -> Result<Option<(u32, Option<u32>)>, String> {
        let start = self.at;
        if !self.eat('{') {
            return Ok(None);
        }
        let number = |parser: &mut Parser<'_>| -> Option<u32> {
            let from = parser.at;
            while parser.peek().is_some_and(|c| c.is_ascii_digit()) {
                parser.at += 1;
            }
            if parser.at == from {
                return None;
            }
            let text: String = parser.chars[from..parser.at].iter().collect();
            Some(text.parse::<u32>().unwrap_or(u32::MAX))
        };
        let Some(min) = number(self) else {
            self.at = start;
            return Ok(None);
        };
        let max = if self.eat(',') {
            if self.peek() == Some('}') {
                None
            } else {
                match number(self) {
                    Some(max) => Some(max),
                    None => {
                        self.at = start;
                        return Ok(None);
                    }
                }
            }
        } else {
            Some(min)
        };
        if !self.eat('}') {
            self.at = start;
            return Ok(None);
        }
        if min > MAX_REPEAT || max.is_some_and(|max| max > MAX_REPEAT) {
            return self.fail("repetition bound over 1000");
        }
        if max.is_some_and(|max| max < min) {
            return self.fail("numbers out of order in {} quantifier");
        }
        Ok(Some((min, max)))
    }

    fn quantified(&mut self, atom: Node) -> Result<Node, String> {
        let (min, max) = match self.peek() {
            Some('*') => {
                self.at += 1;
                (0, None)
            }
            Some('+') => {
                self.at += 1;
                (1, None)
            }
            Some('?') => {
                self.at += 1;
                (0, Some(1))
            }
            Some('{') => match self.braces()? {
                Some(bounds) => bounds,
                None => return Ok(atom),
            },
            _ => return Ok(atom),
        };
        if matches!(
            atom,
            Node::Start | Node::End | Node::WordBoundary { .. } | Node::Empty
        ) {
            return self.fail("nothing to repeat");
        }
        // A lazy quantifier matches the same set of strings.
        self.eat('?');
        if matches!(self.peek(), Some('*' | '+' | '?')) {
            return self.fail("nothing to repeat");
        }
        Ok(Node::Repeat {
            node: Box::new(atom),
            min,
            max,
        })
    }

    fn atom(&mut self, depth: usize) -> Result<Node, String> {
        let Some(c) = self.next() else {
            return self.fail("unexpected end");
        };
        match c {
            '(' => {
                if self.eat('?') {
                    if self.eat(':') {
                        // non-capturing group
                    } else if self.peek() == Some('<')
                        && !matches!(self.peek_at(1), Some('=' | '!'))
                    {
                        self.at += 1;
                        while let Some(c) = self.next() {
                            if c == '>' {
                                break;
                            }
                            if !(is_word(c) || c == '$') {
                                return self.fail("invalid group name");
                            }
                        }
                    } else {
                        return self.fail("lookaround assertions are not supported");
                    }
                }
                let inner = self.alternation(depth + 1)?;
                if !self.eat(')') {
                    return self.fail("unclosed group");
                }
                Ok(inner)
            }
            ')' => self.fail("unmatched ')'"),
            '[' => self.class(),
            '.' => Ok(Node::Any),
            '^' => Ok(Node::Start),
            '$' => Ok(Node::End),
            '*' | '+' | '?' => self.fail("nothing to repeat"),
            '{' => {
                self.at -= 1;
                if self.braces()?.is_some() {
                    return self.fail("nothing to repeat");
                }
                self.at += 1;
                Ok(Node::Char('{'))
            }
            '\\' => self.escape(false),
            c => Ok(Node::Char(c)),
        }
    }

    fn hex(&mut self, digits: usize) -> Result<char, String> {
        let mut value = 0u32;
        for _ in 0..digits {
            let Some(digit) = self.next().and_then(|c| c.to_digit(16)) else {
                return self.fail("invalid hexadecimal escape");
            };
            value = value * 16 + digit;
        }
        char::from_u32(value).map_or_else(|| self.fail("escape is not a Unicode scalar value"), Ok)
    }

    /// After a backslash. In a class, `\b` is a backspace.
    fn escape(&mut self, in_class: bool) -> Result<Node, String> {
        let Some(c) = self.next() else {
            return self.fail("trailing backslash");
        };
        let builtin = |kind, negated| {
            Node::Class(Class {
                items: vec![ClassItem::Builtin { kind, negated }],
                negated: false,
            })
        };
        Ok(match c {
            'd' => builtin(Builtin::Digit, false),
            'D' => builtin(Builtin::Digit, true),
            'w' => builtin(Builtin::Word, false),
            'W' => builtin(Builtin::Word, true),
            's' => builtin(Builtin::Space, false),
            'S' => builtin(Builtin::Space, true),
            'b' if in_class => Node::Char('\u{8}'),
            'b' => Node::WordBoundary { negated: false },
            'B' if !in_class => Node::WordBoundary { negated: true },
            't' => Node::Char('\t'),
            'n' => Node::Char('\n'),
            'v' => Node::Char('\u{0B}'),
            'f' => Node::Char('\u{0C}'),
            'r' => Node::Char('\r'),
            '0' if !self.peek().is_some_and(|c| c.is_ascii_digit()) => Node::Char('\0'),
            'x' => Node::Char(self.hex(2)?),
            'u' => {
                if self.eat('{') {
                    let mut value = 0u32;
                    let mut count = 0;
                    while let Some(digit) = self.peek().and_then(|c| c.to_digit(16)) {
                        self.at += 1;
                        count += 1;
                        value = value.saturating_mul(16).saturating_add(digit);
                    }
                    if count == 0 || !self.eat('}') {
                        return self.fail("invalid \\u{…} escape");
                    }
                    match char::from_u32(value) {
                        Some(c) => Node::Char(c),
                        None => return self.fail("escape is not a Unicode scalar value"),
                    }
                } else {
                    Node::Char(self.hex(4)?)
                }
            }
            'c' => match self.next() {
                Some(letter) if letter.is_ascii_alphabetic() => {
                    Node::Char(char::from((letter as u8) % 32))
                }
                _ => return self.fail("invalid \\c escape"),
            },
            '1'..='9' => return self.fail("backreferences are not supported"),
            'k' => return self.fail("named backreferences are not supported"),
            'p' | 'P' => return self.fail("Unicode property escapes are not supported"),
            '-' if in_class => Node::Char('-'),
            c if c.is_ascii_alphanumeric() => {
                return self.fail(&format!("unknown escape \\{c}"));
            }
            c => Node::Char(c),
        })
    }

    fn class(&mut self) -> Result<Node, String> {
        let negated = self.eat('^');
        let mut items = Vec::new();
        loop {
            let Some(c) = self.next() else {
                return self.fail("unclosed character class");
            };
            if c == ']' {
                break;
            }
            let low = match c {
                '\\' => match self.escape(true)? {
                    Node::Char(c) => c,
                    Node::Class(class) => {
                        items.extend(class.items);
                        continue;
                    }
                    _ => return self.fail("invalid escape in character class"),
                },
                c => c,
            };
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.at += 1;
                let high = match self.next() {
                    Some('\\') => match self.escape(true)? {
                        Node::Char(c) => c,
                        _ => return self.fail("invalid range in character class"),
                    },
                    Some(c) => c,
                    None => return self.fail("unclosed character class"),
                };
                if high < low {
                    return self.fail("range out of order in character class");
                }
                items.push(ClassItem::Range(low, high));
            } else {
                items.push(ClassItem::Range(low, low));
            }
        }
        Ok(Node::Class(Class { items, negated }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assertion {
    Start,
    End,
    WordBoundary,
    NotWordBoundary,
}

#[derive(Debug, Clone)]
enum Inst {
    Char(char),
    Any,
    Class(usize),
    Assert(Assertion),
    Split(usize, usize),
    Jump(usize),
    Match,
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    program: Vec<Inst>,
    classes: Vec<Class>,
}

struct Compiler<'a> {
    program: Vec<Inst>,
    classes: Vec<Class>,
    source: &'a str,
}

impl Compiler<'_> {
    fn push(&mut self, inst: Inst) -> Result<usize, String> {
        if self.program.len() >= MAX_PROGRAM {
            return Err(format!("pattern {:?}: too large", self.source));
        }
        self.program.push(inst);
        Ok(self.program.len() - 1)
    }

    fn patch(&mut self, at: usize, inst: Inst) {
        if let Some(slot) = self.program.get_mut(at) {
            *slot = inst;
        }
    }

    fn emit(&mut self, node: &Node) -> Result<(), String> {
        match node {
            Node::Empty => {}
            Node::Char(c) => {
                self.push(Inst::Char(*c))?;
            }
            Node::Any => {
                self.push(Inst::Any)?;
            }
            Node::Class(class) => {
                self.classes.push(class.clone());
                self.push(Inst::Class(self.classes.len() - 1))?;
            }
            Node::Start => {
                self.push(Inst::Assert(Assertion::Start))?;
            }
            Node::End => {
                self.push(Inst::Assert(Assertion::End))?;
            }
            Node::WordBoundary { negated } => {
                self.push(Inst::Assert(if *negated {
                    Assertion::NotWordBoundary
                } else {
                    Assertion::WordBoundary
                }))?;
            }
            Node::Concat(items) => {
                for item in items {
                    self.emit(item)?;
                }
            }
            Node::Alternation(branches) => {
                let mut jumps = Vec::new();
                for (index, branch) in branches.iter().enumerate() {
                    if index + 1 < branches.len() {
                        let split = self.push(Inst::Split(0, 0))?;
                        self.emit(branch)?;
                        jumps.push(self.push(Inst::Jump(0))?);
                        let next = self.program.len();
                        self.patch(split, Inst::Split(split + 1, next));
                    } else {
                        self.emit(branch)?;
                    }
                }
                let end = self.program.len();
                for jump in jumps {
                    self.patch(jump, Inst::Jump(end));
                }
            }
            Node::Repeat { node, min, max } => {
                for _ in 0..*min {
                    self.emit(node)?;
                }
                match max {
                    None => {
                        let split = self.push(Inst::Split(0, 0))?;
                        self.emit(node)?;
                        self.push(Inst::Jump(split))?;
                        let end = self.program.len();
                        self.patch(split, Inst::Split(split + 1, end));
                    }
                    Some(max) => {
                        let mut splits = Vec::new();
                        for _ in *min..*max {
                            splits.push(self.push(Inst::Split(0, 0))?);
                            self.emit(node)?;
                        }
                        let end = self.program.len();
                        for split in splits {
                            self.patch(split, Inst::Split(split + 1, end));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Pattern {
    /// Compiles `source`, or says why it is not supported.
    pub(crate) fn new(source: &str) -> Result<Pattern, String> {
        let mut parser = Parser {
            chars: source.chars().collect(),
            at: 0,
            source,
        };
        let node = parser.alternation(0)?;
        if parser.at < parser.chars.len() {
            return parser.fail("unmatched ')'");
        }
        let mut compiler = Compiler {
            program: Vec::new(),
            classes: Vec::new(),
            source,
        };
        compiler.emit(&node)?;
        compiler.push(Inst::Match)?;
        Ok(Pattern {
            program: compiler.program,
            classes: compiler.classes,
        })
    }

    /// Whether the pattern matches somewhere in `text`.
    pub(crate) fn is_match(&self, text: &str) -> bool {
        let input: Vec<char> = text.chars().collect();
        let size = self.program.len();
        let mut current: Vec<usize> = Vec::with_capacity(size);
        let mut next: Vec<usize> = Vec::with_capacity(size);
        // seen[pc] == generation: pc already added at this position.
        let mut seen = vec![usize::MAX; size];
        let mut stack = Vec::with_capacity(size);
        for position in 0..=input.len() {
            // A search: a new thread may start at every position.
            if self.add_at(0, position, &input, &mut current, &mut seen, &mut stack) {
                return true;
            }
            let Some(&c) = input.get(position) else {
                break;
            };
            next.clear();
            let generation = position + 1;
            let mut matched = false;
            for &pc in &current {
                let advance = match &self.program[pc] {
                    Inst::Char(expected) => *expected == c,
                    Inst::Any => !is_line_terminator(c),
                    Inst::Class(index) => self.classes[*index].matches(c),
                    _ => false,
                };
                if advance
                    && self.add_at(pc + 1, generation, &input, &mut next, &mut seen, &mut stack)
                {
                    matched = true;
                }
            }
            if matched {
                return true;
            }
            std::mem::swap(&mut current, &mut next);
        }
        false
    }

    /// Follows jumps, splits and assertions from `pc` at `position`, adding
    /// the threads that consume a character to `list`. True on `Match`.
    fn add_at(
        &self,
        pc: usize,
        position: usize,
        input: &[char],
        list: &mut Vec<usize>,
        seen: &mut [usize],
        stack: &mut Vec<usize>,
    ) -> bool {
        stack.clear();
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if seen[pc] == position {
                continue;
            }
            seen[pc] = position;
            match &self.program[pc] {
                Inst::Match => return true,
                Inst::Jump(to) => stack.push(*to),
                Inst::Split(first, second) => {
                    stack.push(*second);
                    stack.push(*first);
                }
                Inst::Assert(assertion) => {
                    let before = position.checked_sub(1).and_then(|i| input.get(i)).copied();
                    let after = input.get(position).copied();
                    let boundary = before.is_some_and(is_word) != after.is_some_and(is_word);
                    let holds = match assertion {
                        Assertion::Start => position == 0,
                        Assertion::End => position == input.len(),
                        Assertion::WordBoundary => boundary,
                        Assertion::NotWordBoundary => !boundary,
                    };
                    if holds {
                        stack.push(pc + 1);
                    }
                }
                Inst::Char(_) | Inst::Any | Inst::Class(_) => list.push(pc),
            }
        }
        false
    }
}
