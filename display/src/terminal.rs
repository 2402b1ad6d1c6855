//! A live view of a frame in a truecolor terminal: each cell is an upper half block ('▀')
//! whose foreground is the upper pixel and background the lower one. The picture is scaled
//! to the terminal (aspect kept) and only cells that changed are redrawn.
#![expect(
    clippy::cast_possible_truncation,
    reason = "cell positions are bounded by the terminal's u16 size and sampled pixel \
              coordinates by the frame's u32 size"
)]

use std::io::{self, Write};
use std::time::Duration;

use crossterm::cursor::{Hide, MoveTo, Show};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::{Color, Print, ResetColor, SetBackgroundColor, SetForegroundColor};
use crossterm::terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{execute, queue};

use crate::client::{ClientError, DisplayClient};
use crate::format::Frame;

/// The glyph of a cell: the upper half filled with the foreground colour.
const UPPER_HALF_BLOCK: char = '\u{2580}';

/// How long the live view waits for a key between two frames (about 30 frames per second).
const FRAME_INTERVAL: Duration = Duration::from_millis(33);

/// One terminal cell: the colours of its upper and lower pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cell {
    /// Upper pixel (foreground).
    pub upper: [u8; 3],
    /// Lower pixel (background).
    pub lower: [u8; 3],
}

/// Turns frames into terminal output, remembering what the terminal shows so the next frame
/// redraws only changed cells.
#[derive(Debug, Default)]
pub struct TerminalRenderer {
    cols: u16,
    rows: u16,
    shown: Vec<Option<Cell>>,
    next: Vec<Cell>,
}

impl TerminalRenderer {
    /// A renderer that assumes an empty terminal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets what the terminal shows (after a resize or a clear): the next frame is drawn
    /// whole.
    pub fn invalidate(&mut self) {
        self.shown.iter_mut().for_each(|c| *c = None);
    }

    /// The cells `frame` becomes on a `cols` × `rows` terminal, row-major, and the size of
    /// the picture in cells (aspect kept: one cell is one pixel wide and two high).
    pub fn layout(frame: &Frame<'_>, cols: u16, rows: u16, cells: &mut Vec<Cell>) -> (u16, u16) {
        let (w, h) = (u64::from(frame.width()), u64::from(frame.height()));
        let (tw, th) = (u64::from(cols), u64::from(rows) * 2);
        cells.clear();
        if w == 0 || h == 0 || tw == 0 || th == 0 {
            return (0, 0);
        }
        // Scale so the picture fits both ways.
        let (pw, ph) = if w * th <= h * tw {
            ((w * th / h).max(1), th)
        } else {
            (tw, (h * tw / w).max(1))
        };
        let out_cols = pw as u16;
        let out_rows = ph.div_ceil(2) as u16;
        let sample_y = |py: u64| ((py * h / ph) as u32).min(frame.height() - 1);
        cells.reserve(usize::from(out_cols) * usize::from(out_rows));
        let xs: Vec<u32> = (0..pw).map(|px| (px * w / pw) as u32).collect();
        for row in 0..u64::from(out_rows) {
            let up = sample_y(row * 2);
            let low = (row * 2 + 1 < ph).then(|| sample_y(row * 2 + 1));
            for &x in &xs {
                cells.push(Cell {
                    upper: frame.pixel(x, up),
                    lower: low.map_or([0; 3], |y| frame.pixel(x, y)),
                });
            }
        }
        (out_cols, out_rows)
    }

    /// Appends to `out` the commands that turn the terminal's picture into `frame` on a
    /// `cols` × `rows` terminal. Returns how many cells were drawn.
    pub fn render(
        &mut self,
        frame: &Frame<'_>,
        cols: u16,
        rows: u16,
        out: &mut Vec<u8>,
    ) -> io::Result<usize> {
        let mut next = std::mem::take(&mut self.next);
        let (pc, pr) = Self::layout(frame, cols, rows, &mut next);
        let size_changed = (pc, pr) != (self.cols, self.rows);
        if size_changed {
            queue!(out, ResetColor, Clear(ClearType::All))?;
            self.cols = pc;
            self.rows = pr;
            self.shown = vec![None; next.len()];
        }
        let drawn = self.draw_changes(&next, out)?;
        self.next = next;
        Ok(drawn)
    }

    fn draw_changes(&mut self, next: &[Cell], out: &mut Vec<u8>) -> io::Result<usize> {
        let cols = usize::from(self.cols.max(1));
        let mut cursor: Option<usize> = None;
        let mut colours: Option<([u8; 3], [u8; 3])> = None;
        let mut drawn = 0;
        for (i, (cell, shown)) in next.iter().zip(self.shown.iter_mut()).enumerate() {
            if *shown == Some(*cell) {
                continue;
            }
            if cursor != Some(i) {
                queue!(out, MoveTo((i % cols) as u16, (i / cols) as u16))?;
            }
            let [fr, fg, fb] = cell.upper;
            let [br, bg, bb] = cell.lower;
            match colours {
                Some((f, b)) if f == cell.upper && b == cell.lower => {}
                Some((f, _)) if f == cell.upper => queue!(
                    out,
                    SetBackgroundColor(Color::Rgb {
                        r: br,
                        g: bg,
                        b: bb
                    })
                )?,
                Some((_, b)) if b == cell.lower => queue!(
                    out,
                    SetForegroundColor(Color::Rgb {
                        r: fr,
                        g: fg,
                        b: fb
                    })
                )?,
                _ => queue!(
                    out,
                    SetForegroundColor(Color::Rgb {
                        r: fr,
                        g: fg,
                        b: fb
                    }),
                    SetBackgroundColor(Color::Rgb {
                        r: br,
                        g: bg,
                        b: bb
                    })
                )?,
            }
            queue!(out, Print(UPPER_HALF_BLOCK))?;
            colours = Some((cell.upper, cell.lower));
            // After the last column the cursor wraps (or sticks); move explicitly next time.
            cursor = ((i + 1) % cols != 0).then_some(i + 1);
            *shown = Some(*cell);
            drawn += 1;
        }
        if drawn > 0 {
            queue!(out, ResetColor)?;
        }
        Ok(drawn)
    }
}

/// Puts the terminal in raw mode on the alternate screen with the cursor hidden, and puts it
/// back when dropped (on return, error or panic unwinding).
pub struct TerminalGuard {
    _private: (),
}

impl TerminalGuard {
    /// Enters the live-view terminal state; also makes a panic restore the terminal before
    /// its message is printed.
    pub fn enter() -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        let guard = TerminalGuard { _private: () };
        execute!(
            io::stdout(),
            EnterAlternateScreen,
            Hide,
            Clear(ClearType::All)
        )?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    let _ = execute!(io::stdout(), ResetColor, Show, LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
}

/// True for the keys that end the live view: q, Esc, Ctrl-C.
pub fn is_quit_key(key: &KeyEvent) -> bool {
    key.kind != KeyEventKind::Release
        && match key.code {
            KeyCode::Char('q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// Shows `client`'s display in this terminal until q, Esc or Ctrl-C, or until the server
/// asks the client to let the device go. The terminal is restored on every way out.
pub fn run_live_view(client: &mut DisplayClient) -> Result<(), ClientError> {
    let guard = TerminalGuard::enter().map_err(ClientError::Terminal)?;
    let result = live_loop(client);
    drop(guard);
    result
}

fn live_loop(client: &mut DisplayClient) -> Result<(), ClientError> {
    let io_err = ClientError::Terminal;
    let mut renderer = TerminalRenderer::new();
    let mut out = Vec::with_capacity(1 << 20);
    let mut blank_shown = false;
    let mut stdout = io::stdout();
    loop {
        if client.release_requested() {
            // The instance is being removed: let it go.
            return Ok(());
        }
        if event::poll(FRAME_INTERVAL).map_err(io_err)? {
            match event::read().map_err(io_err)? {
                Event::Key(k) if is_quit_key(&k) => return Ok(()),
                Event::Resize(..) => {
                    renderer = TerminalRenderer::new();
                    blank_shown = false;
                }
                _ => {}
            }
        }
        let (cols, rows) = terminal::size().map_err(io_err)?;
        out.clear();
        match client.frame()? {
            Some(frame) => {
                blank_shown = false;
                renderer
                    .render(&frame, cols, rows, &mut out)
                    .map_err(io_err)?;
            }
            None if !blank_shown => {
                renderer = TerminalRenderer::new();
                blank_shown = true;
                queue!(
                    out,
                    ResetColor,
                    Clear(ClearType::All),
                    MoveTo(0, 0),
                    Print("no scan-out (display disabled or mode invalid); q to quit")
                )
                .map_err(io_err)?;
            }
            None => {}
        }
        if !out.is_empty() {
            stdout.write_all(&out).map_err(io_err)?;
            stdout.flush().map_err(io_err)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Mode, PixelFormat};

    fn checkerboard(w: u32, h: u32) -> Vec<u8> {
        (0..w * h)
            .flat_map(|i| {
                let on = ((i % w) + (i / w)) & 1 == 0;
                PixelFormat::Xrgb8888.from_rgb(if on { [255; 3] } else { [0; 3] })
            })
            .collect()
    }

    #[test]
    fn half_blocks_carry_the_upper_and_lower_pixel() {
        let fb = checkerboard(4, 4);
        let frame = Frame::new(Mode::packed(PixelFormat::Xrgb8888, 4, 4), &fb).unwrap();
        let mut cells = Vec::new();
        assert_eq!(TerminalRenderer::layout(&frame, 4, 2, &mut cells), (4, 2));
        assert_eq!(
            cells[0],
            Cell {
                upper: [255; 3],
                lower: [0; 3]
            }
        );
        assert_eq!(
            cells[1],
            Cell {
                upper: [0; 3],
                lower: [255; 3]
            }
        );
    }

    #[test]
    fn the_picture_is_scaled_with_its_aspect_kept() {
        let fb = vec![0u8; 1920 * 1080 * 4];
        let frame = Frame::new(Mode::packed(PixelFormat::Xrgb8888, 1920, 1080), &fb).unwrap();
        let mut cells = Vec::new();
        let (c, r) = TerminalRenderer::layout(&frame, 80, 24, &mut cells);
        assert_eq!((c, r), (80, 23));
        assert_eq!(cells.len(), 80 * 23);
        let (c, r) = TerminalRenderer::layout(&frame, 400, 10, &mut cells);
        assert_eq!((c, r), (35, 10));
        assert_eq!(TerminalRenderer::layout(&frame, 0, 0, &mut cells), (0, 0));
    }

    #[test]
    fn only_changed_cells_are_redrawn() {
        let mut fb = checkerboard(8, 8);
        let mode = Mode::packed(PixelFormat::Xrgb8888, 8, 8);
        let mut r = TerminalRenderer::new();
        let mut out = Vec::new();
        let frame = Frame::new(mode, &fb).unwrap();
        assert_eq!(r.render(&frame, 8, 4, &mut out).unwrap(), 32);
        out.clear();
        assert_eq!(r.render(&frame, 8, 4, &mut out).unwrap(), 0);
        assert!(out.is_empty());
        fb[0..4].copy_from_slice(&[1, 2, 3, 0]);
        let frame = Frame::new(mode, &fb).unwrap();
        assert_eq!(r.render(&frame, 8, 4, &mut out).unwrap(), 1);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(UPPER_HALF_BLOCK));
        r.invalidate();
        out.clear();
        assert_eq!(r.render(&frame, 8, 4, &mut out).unwrap(), 32);
    }

    #[test]
    fn quit_keys() {
        let k = |code, m| KeyEvent::new(code, m);
        assert!(is_quit_key(&k(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(is_quit_key(&k(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(is_quit_key(&k(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!is_quit_key(&k(KeyCode::Char('c'), KeyModifiers::NONE)));
    }
}
