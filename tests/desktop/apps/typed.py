"""Runs in an xterm on the sandbox's desktop: every byte typed goes to the file named by
the first argument, unchanged (non-canonical mode: no line limit; no echo). The file
named by the second argument appears once the terminal is ready."""

import os
import sys
import termios

fd = sys.stdin.fileno()
attrs = termios.tcgetattr(fd)
attrs[3] &= ~(termios.ICANON | termios.ECHO)
attrs[6][termios.VMIN] = 1
attrs[6][termios.VTIME] = 0
termios.tcsetattr(fd, termios.TCSANOW, attrs)
with open(sys.argv[1], "wb", buffering=0) as out:
    open(sys.argv[2], "w").close()
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        out.write(data)
