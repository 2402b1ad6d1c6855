"""Captures one frame from a VNC server as a PNG with vncdotool, an independent client.

    capture.py HOST:PORT OUT.png [--encoding raw|zrle] [--pixel-format native|rgbx]
               [--size WxH] [--after FILE] [--settle SECS] [--timeout SECS]

Connects (RFB 3.8, security None, shared), asks for the whole picture and then keeps asking
for changes, following DesktopSize updates. It saves the picture once it is --size (when
given), FILE exists (when --after is given: the caller says when the picture is final) and
no update came for --settle seconds (the picture is static). --pixel-format rgbx makes the
client ask for 32-bit pixels with red in the low byte (SetPixelFormat) instead of taking the
server's. Exit status 0 when saved, 1 on a connection error or the timeout.
"""

import argparse
import os
import sys
import time

from twisted.internet import reactor, task
from vncdotool import rfb
from vncdotool.client import RGB32, VNCDoToolClient, VNCDoToolFactory

ARGS = None
RESULT = {"code": 1}


def log(msg):
    print(f"capture.py: {msg}", file=sys.stderr, flush=True)


class Capture(VNCDoToolClient):
    """Follows the server's picture until it is the one asked for, then saves it."""

    def vncConnectionMade(self):
        self.encoding = {"raw": rfb.Encoding.RAW, "zrle": rfb.Encoding.ZRLE}[ARGS.encoding]
        super().vncConnectionMade()
        if ARGS.pixel_format == "rgbx":
            self.setPixelFormat(RGB32)
            self._image_mode = "RGBX"
        self.updates = 0
        self.resizes = 0
        self.last_update = time.monotonic()
        self.framebufferUpdateRequest(incremental=False)
        self.checker = task.LoopingCall(self.check)
        self.checker.start(0.05, now=False)

    def updateDesktopSize(self, width, height):
        super().updateDesktopSize(width, height)
        # vncdotool keeps requesting its first size otherwise.
        self.width, self.height = width, height
        self.resizes += 1

    def commitUpdate(self, rectangles=None):
        if self.updates == 0 and self.screen is not None:
            w, h = self.screen.size
            log(f"first picture {w}x{h}")
        self.updates += 1
        self.last_update = time.monotonic()
        self.framebufferUpdateRequest(incremental=True)

    def check(self):
        if self.screen is None:
            return
        if ARGS.size and self.screen.size != ARGS.size:
            return
        if ARGS.after and not os.path.exists(ARGS.after):
            return
        if time.monotonic() - self.last_update < ARGS.settle:
            return
        self.checker.stop()
        self.screen.save(ARGS.out)
        w, h = self.screen.size
        log(f"saved {w}x{h} to {ARGS.out} ({self.updates} updates, {self.resizes} resizes, "
            f"{ARGS.encoding}, {ARGS.pixel_format} pixels)")
        RESULT["code"] = 0
        self.transport.loseConnection()
        reactor.callLater(0, reactor.stop)


def size(text):
    w, _, h = text.partition("x")
    return (int(w), int(h))


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("server", help="HOST:PORT")
    p.add_argument("out")
    p.add_argument("--encoding", choices=["raw", "zrle"], default="zrle")
    p.add_argument("--pixel-format", choices=["native", "rgbx"], default="native")
    p.add_argument("--size", type=size)
    p.add_argument("--after")
    p.add_argument("--settle", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=60)
    ARGS = p.parse_args()
    host, _, port = ARGS.server.rpartition(":")

    factory = VNCDoToolFactory()
    factory.protocol = Capture

    def failed(reason):
        log(f"connection failed: {reason.getErrorMessage()}")
        if reactor.running:
            reactor.stop()

    factory.deferred.addErrback(failed)

    def timeout():
        log(f"no capture within {ARGS.timeout}s")
        reactor.stop()

    reactor.callLater(ARGS.timeout, timeout)
    reactor.connectTCP(host, int(port), factory)
    reactor.run()
    return RESULT["code"]


if __name__ == "__main__":
    sys.exit(main())
