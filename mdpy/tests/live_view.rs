//! `mdpy view`, driven the way a person uses it: the real binary serves an XGA instance, a
//! vfio-user client plays the guest and paints BAR0 through its mapping, and `mdpy view` runs
//! on a pseudo-terminal of a known size (80×24) that this test owns as its controlling
//! terminal. A small terminal emulator reads the transcript back into cells, so the test checks
//! what a person would see: the alternate screen with the cursor hidden, truecolor half-block
//! cells scaled to the terminal, a partial redraw after the guest changes a region, and on `q`
//! a clean exit with the screen, the cursor and the terminal modes put back.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mdev_display::testing::map_framebuffer_rw;
use mdev_tests::pty::{assert_restored, is_raw, Running, Terminal, DEADLINE};
use mdev_tests::{wait_until, ScratchDir};
use nix::sys::termios::LocalFlags;
use uuid::Uuid;
use vfio_user::Client;

const MDPY: &str = env!("CARGO_BIN_EXE_mdpy");

/// The pty's size.
const COLS: u16 = 80;
const ROWS: u16 = 24;

/// The xga type's mode (XRGB8888, packed).
const WIDTH: usize = 1024;
const HEIGHT: usize = 768;

/// XRGB8888 pixels the guest paints, and the RGB the terminal must show for them.
const RED: u32 = 0x00ff_0000;
const BLUE: u32 = 0x0000_00ff;
const GREEN: u32 = 0x0000_ff00;

fn rgb(px: u32) -> [u8; 3] {
    [(px >> 16) as u8, (px >> 8) as u8, px as u8]
}

/// The picture on an 80×24 terminal: 1024×768 scaled to 64×48 pixels (aspect kept), i.e.
/// 64 columns × 24 rows of half-block cells, one cell per 16×32 framebuffer pixels.
const PIC_COLS: usize = 64;
const PIC_ROWS: usize = 24;

/// The region the guest repaints second, in framebuffer pixels: x 256..384, y 128..256,
/// which is exactly the cells of columns 16..24 and rows 4..8 (32 cells).
const BLOCK_X: std::ops::Range<usize> = 256..384;
const BLOCK_Y: std::ops::Range<usize> = 128..256;
const BLOCK_COLS: std::ops::Range<usize> = 16..24;
const BLOCK_ROWS: std::ops::Range<usize> = 4..8;

/// `mdpy serve --dir DIR --create xga,uuid=UUID` with plain pipes (its log in DIR/serve.log).
fn serve(dir: &Path, uuid: Uuid) -> Running {
    let log = File::create(dir.join("serve.log")).expect("serve log");
    let mut cmd = Command::new(MDPY);
    cmd.arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--create")
        .arg(format!("xga,uuid={uuid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Running::start(cmd, "mdpy serve")
}

/// Connects "the guest" to the instance, retrying until `server` serves it.
fn connect(socket: &Path, server: &mut Running, log: &Path) -> Client {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(c) = Client::new(socket) {
            return c;
        }
        let log = || std::fs::read_to_string(log).unwrap_or_default();
        assert!(server.running(), "mdpy serve exited: {}", log());
        assert!(
            Instant::now() < deadline,
            "{} not served within {DEADLINE:?}: {}",
            socket.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Paints the rectangle `xs` × `ys` of an XRGB8888 1024×768 framebuffer with `px`.
fn paint(
    fb: &mut [u8],
    xs: std::ops::Range<usize>,
    ys: std::ops::Range<usize>,
    px: impl Fn(usize) -> u32,
) {
    for y in ys {
        for x in xs.clone() {
            let at = (y * WIDTH + x) * 4;
            fb[at..at + 4].copy_from_slice(&px(x).to_le_bytes());
        }
    }
}

/// `mdpy view --dir DIR UUID` with `term` as stdin, stdout, stderr and controlling terminal.
fn view_on(term: &Terminal, dir: &Path, uuid: Uuid) -> Running {
    let mut cmd = Command::new(MDPY);
    cmd.arg("view").arg("--dir").arg(dir).arg(uuid.to_string());
    Running::on_terminal(cmd, term, "mdpy view")
}

// ---------------------------------------------------------------------------------------
// A terminal emulator just big enough for what the viewer writes: cursor moves, truecolor
// SGR, clears, and printed characters.

/// What one screen cell shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shown {
    /// A half block: foreground (upper pixel) and background (lower pixel).
    HalfBlock {
        upper: Option<[u8; 3]>,
        lower: Option<[u8; 3]>,
    },
    /// Any other character.
    Other(char),
}

struct Screen {
    cells: Vec<Option<Shown>>,
    row: usize,
    col: usize,
    fg: Option<[u8; 3]>,
    bg: Option<[u8; 3]>,
    /// Every cell a half block was printed on, with repeats.
    half_blocks_printed: Vec<(usize, usize)>,
}

const HALF_BLOCK: char = '\u{2580}';

/// The picture's cells, row by row: (upper, lower) colour of a half block, `None` for
/// anything else.
type Picture = Vec<Vec<Option<([u8; 3], [u8; 3])>>>;

impl Screen {
    fn new() -> Self {
        Screen {
            cells: vec![None; usize::from(COLS) * usize::from(ROWS)],
            row: 0,
            col: 0,
            fg: None,
            bg: None,
            half_blocks_printed: Vec::new(),
        }
    }

    /// The screen after `bytes` were written to a fresh one.
    fn after(bytes: &[u8]) -> Self {
        let mut s = Screen::new();
        s.feed(bytes);
        s
    }

    fn at(&self, row: usize, col: usize) -> Option<Shown> {
        self.cells[row * usize::from(COLS) + col]
    }

    fn put(&mut self, shown: Shown) {
        let (cols, rows) = (usize::from(COLS), usize::from(ROWS));
        if self.col >= cols {
            self.col = 0;
            self.row += 1;
        }
        if self.row < rows {
            self.cells[self.row * cols + self.col] = Some(shown);
        }
        self.col += 1;
    }

    fn sgr(&mut self, params: &str) {
        let p: Vec<u32> = params.split(';').map(|s| s.parse().unwrap_or(0)).collect();
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                0 => (self.fg, self.bg) = (None, None),
                38 | 48 if p.get(i + 1) == Some(&2) && i + 4 < p.len() => {
                    let c = Some([p[i + 2] as u8, p[i + 3] as u8, p[i + 4] as u8]);
                    if p[i] == 38 {
                        self.fg = c;
                    } else {
                        self.bg = c;
                    }
                    i += 4;
                }
                39 => self.fg = None,
                49 => self.bg = None,
                _ => {}
            }
            i += 1;
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\x1b' if chars.peek() == Some(&'[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut fin = None;
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            fin = Some(c);
                            break;
                        }
                        params.push(c);
                    }
                    match fin {
                        Some('H') => {
                            let mut it = params.split(';').map(|s| s.parse().unwrap_or(1));
                            let row: usize = it.next().unwrap_or(1);
                            let col: usize = it.next().unwrap_or(1);
                            self.row = row.saturating_sub(1);
                            self.col = col.saturating_sub(1);
                        }
                        Some('J') if params == "2" => self.cells.iter_mut().for_each(|c| *c = None),
                        Some('m') => self.sgr(&params),
                        _ => {}
                    }
                }
                '\x1b' => {}
                '\r' => self.col = 0,
                '\n' => self.row += 1,
                HALF_BLOCK => {
                    self.half_blocks_printed.push((self.row, self.col));
                    self.put(Shown::HalfBlock {
                        upper: self.fg,
                        lower: self.bg,
                    });
                }
                c if !c.is_control() => self.put(Shown::Other(c)),
                _ => {}
            }
        }
    }

    /// The picture region as colours of its cells, or `None` where a cell is not a half
    /// block; plus whether everything outside the picture is blank.
    fn picture(&self) -> (Picture, bool) {
        let pic = (0..PIC_ROWS)
            .map(|r| {
                (0..PIC_COLS)
                    .map(|c| match self.at(r, c) {
                        Some(Shown::HalfBlock {
                            upper: Some(u),
                            lower: Some(l),
                        }) => Some((u, l)),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let blank_outside = (0..usize::from(ROWS)).all(|r| {
            (0..usize::from(COLS))
                .all(|c| (r < PIC_ROWS && c < PIC_COLS) || self.at(r, c).is_none())
        });
        (pic, blank_outside)
    }
}

/// The expected picture: left half red, right half blue, and the block green if `block`.
fn expected_picture(block: bool) -> Picture {
    (0..PIC_ROWS)
        .map(|r| {
            (0..PIC_COLS)
                .map(|c| {
                    let px = if block && BLOCK_ROWS.contains(&r) && BLOCK_COLS.contains(&c) {
                        GREEN
                    } else if c < PIC_COLS / 2 {
                        RED
                    } else {
                        BLUE
                    };
                    Some((rgb(px), rgb(px)))
                })
                .collect()
        })
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

const ENTER_ALTERNATE_SCREEN: &[u8] = b"\x1b[?1049h";
const LEAVE_ALTERNATE_SCREEN: &[u8] = b"\x1b[?1049l";
const HIDE_CURSOR: &[u8] = b"\x1b[?25l";
const SHOW_CURSOR: &[u8] = b"\x1b[?25h";
const RESET_COLOURS: &[u8] = b"\x1b[0m";

// ---------------------------------------------------------------------------------------

#[test]
fn view_draws_the_guest_picture_redraws_only_changes_and_quits_restoring_the_terminal() {
    let scratch = ScratchDir::new("mdpy-live-view");
    let uuid = Uuid::new_v4();
    let mut server = serve(scratch.path(), uuid);
    let socket = scratch.join(&format!("{uuid}.sock"));
    let guest = connect(&socket, &mut server, &scratch.join("serve.log"));

    // The guest paints left half red, right half blue through its mapping of BAR0.
    let mut fb = map_framebuffer_rw(&guest).expect("map BAR0");
    assert!(fb.len() >= WIDTH * HEIGHT * 4, "BAR0 holds an xga frame");
    paint(&mut fb, 0..WIDTH, 0..HEIGHT, |x| {
        if x < WIDTH / 2 {
            RED
        } else {
            BLUE
        }
    });

    let mut term = Terminal::with_size(COLS, ROWS);
    let before = term.mode();
    assert!(
        !is_raw(&before),
        "a fresh pty is in canonical mode with echo"
    );
    let mut view = view_on(&term, scratch.path(), uuid);

    // The first frame: the whole picture, scaled to 64×24 cells, on the alternate screen.
    let picture_start = |t: &[u8]| find(t, ENTER_ALTERNATE_SCREEN).map(|i| i + 8);
    let first_shown = |t: &[u8]| {
        picture_start(t).is_some_and(|start| {
            let (pic, blank) = Screen::after(&t[start..]).picture();
            pic == expected_picture(false) && blank && t.ends_with(RESET_COLOURS)
        })
    };
    wait_until("the first frame (red | blue)", || {
        first_shown(&term.bytes())
    });
    let first_end = term.len();
    let t = term.bytes();
    let start = picture_start(&t).expect("alternate screen");
    assert!(
        find(&t[start..], HIDE_CURSOR).is_some(),
        "the cursor is hidden"
    );
    let first = &t[start..first_end];
    for sgr in [
        &b"\x1b[38;2;255;0;0m"[..],
        b"\x1b[48;2;255;0;0m",
        b"\x1b[38;2;0;0;255m",
        b"\x1b[48;2;0;0;255m",
    ] {
        assert!(
            find(first, sgr).is_some(),
            "truecolor {:?} in the first frame",
            String::from_utf8_lossy(sgr)
        );
    }
    let half_block = HALF_BLOCK.to_string().into_bytes();
    assert_eq!(
        count(first, &half_block),
        PIC_COLS * PIC_ROWS,
        "every cell of the picture drawn once"
    );
    assert!(
        is_raw(&term.mode()),
        "the view puts the terminal in raw mode"
    );
    assert!(view.running(), "the view keeps running");

    // The guest repaints a block: only those cells are redrawn.
    paint(&mut fb, BLOCK_X, BLOCK_Y, |_| GREEN);
    let second_shown = |t: &[u8]| {
        picture_start(t).is_some_and(|start| {
            let (pic, blank) = Screen::after(&t[start..]).picture();
            pic == expected_picture(true) && blank && t.ends_with(RESET_COLOURS)
        })
    };
    wait_until("the green block", || second_shown(&term.bytes()));
    let second_end = term.len();
    let t = term.bytes();
    let second = &t[first_end..second_end];
    let redraw = Screen::after(second);
    let redrawn: HashSet<(usize, usize)> = redraw.half_blocks_printed.iter().copied().collect();
    let block_cells: HashSet<(usize, usize)> = BLOCK_ROWS
        .flat_map(|r| BLOCK_COLS.map(move |c| (r, c)))
        .collect();
    assert_eq!(
        redrawn, block_cells,
        "exactly the block's cells are redrawn"
    );
    // A frame may catch the guest half-way through its writes: each cell is then drawn at
    // most twice (once per half).
    assert!(
        redraw.half_blocks_printed.len() <= 2 * block_cells.len(),
        "{} half blocks for {} changed cells",
        redraw.half_blocks_printed.len(),
        block_cells.len()
    );
    println!(
        "first frame {} bytes ({} cells), partial redraw {} bytes ({} cells)",
        first.len(),
        PIC_COLS * PIC_ROWS,
        second.len(),
        redraw.half_blocks_printed.len()
    );
    assert!(
        second.len() * 10 < first.len(),
        "the partial redraw ({} bytes) is far smaller than the first frame ({} bytes)",
        second.len(),
        first.len()
    );
    assert!(
        find(second, b"\x1b[38;2;0;255;0m").is_some()
            && find(second, b"\x1b[48;2;0;255;0m").is_some(),
        "the block is drawn in truecolor green"
    );

    // q quits: exit 0, the main screen and the cursor back, the terminal modes restored.
    term.type_keys(b"q");
    let status = view.exit_status();
    assert!(
        status.success(),
        "mdpy view exits 0 on q: {status}; terminal: {:?}",
        String::from_utf8_lossy(&term.bytes()[second_end..])
    );
    // The child's last writes may still be on their way through the pty.
    wait_until("the alternate screen left", || {
        find(&term.bytes()[second_end..], LEAVE_ALTERNATE_SCREEN).is_some()
    });
    let t = term.bytes();
    let tail = &t[second_end..];
    let leave = rfind(tail, LEAVE_ALTERNATE_SCREEN).expect("left");
    assert!(
        find(tail, SHOW_CURSOR).is_some(),
        "the cursor is shown again: {:?}",
        String::from_utf8_lossy(tail)
    );
    assert!(
        rfind(&t, &half_block).unwrap() < second_end + leave,
        "nothing is drawn after leaving the alternate screen"
    );
    let after = term.mode();
    assert_restored(&before, &after);
    assert!(
        after
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO),
        "canonical mode and echo are back"
    );

    // The viewer leaving disturbed nothing: the guest's connection and pixels are intact.
    let mut guest = guest;
    let mut id = [0u8; 4];
    guest
        .region_read(7, 0, &mut id)
        .expect("the guest's connection still works");
    assert_eq!(
        u32::from_le_bytes(id),
        0x000f_1b36,
        "mdpy's vendor/device id"
    );
    let at = (BLOCK_Y.start * WIDTH + BLOCK_X.start) * 4;
    assert_eq!(
        fb[at..at + 4],
        GREEN.to_le_bytes(),
        "the guest's pixels stay"
    );
    drop(fb);
    drop(guest);
    assert!(server.terminate().success(), "mdpy serve exits cleanly");
}

#[test]
fn view_refuses_when_standard_output_is_not_a_terminal() {
    let scratch = ScratchDir::new("mdpy-view-no-tty");
    let uuid = Uuid::new_v4();
    let mut server = serve(scratch.path(), uuid);
    let socket = scratch.join(&format!("{uuid}.sock"));
    drop(connect(&socket, &mut server, &scratch.join("serve.log")));

    // stdin is a terminal (so raw mode would be possible), stdout a pipe: refused, and the
    // terminal is left exactly as it was.
    let term = Terminal::with_size(COLS, ROWS);
    let before = term.mode();
    let mut cmd = Command::new(MDPY);
    cmd.arg("view")
        .arg("--dir")
        .arg(scratch.path())
        .arg(uuid.to_string())
        .stdin(term.stdio())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut view = Running::start(cmd, "mdpy view");
    // The message is far smaller than a pipe's buffer: waiting first cannot block the child.
    let status = view.exit_status();
    let (mut stdout, mut stderr) = (Vec::new(), String::new());
    let pipes = (view.child.stdout.take(), view.child.stderr.take());
    pipes
        .0
        .expect("stdout")
        .read_to_end(&mut stdout)
        .expect("stdout");
    pipes
        .1
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(!status.success(), "mdpy view without a terminal fails");
    assert!(
        stderr.contains("view needs a terminal on standard output"),
        "a clear message: {stderr:?}"
    );
    assert!(
        stdout.is_empty(),
        "no escape sequences into the pipe: {:?}",
        String::from_utf8_lossy(&stdout)
    );
    assert_restored(&before, &term.mode());
    assert_eq!(term.len(), 0, "nothing written to the terminal");
    assert!(server.terminate().success(), "mdpy serve exits cleanly");
}
