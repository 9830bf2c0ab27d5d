"""A full-screen Tk window on the sandbox's desktop that records what reaches it.

Every button press and release, drag motion, wheel click and key goes to the file named
by the first argument as one JSON line; the window shows coloured squares at known
places (``SQUARES``) for screenshots to read back. The file named by the second argument
appears once the window is mapped."""

import json
import sys
import tkinter

SQUARES = [
    (100, 100, "#ff0000"),
    (300, 100, "#00ff00"),
    (500, 100, "#0000ff"),
    (700, 300, "#123456"),
]

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115  # open while the app runs


def record(kind, event, **extra):
    out.write(
        json.dumps(
            {"kind": kind, "x": event.x_root, "y": event.y_root, "state": event.state, **extra}
        )
        + "\n"
    )


root = tkinter.Tk()
width, height = root.winfo_screenwidth(), root.winfo_screenheight()
# Full screen through the window manager (not override-redirect): it takes the focus.
root.attributes("-fullscreen", True)
canvas = tkinter.Canvas(
    root, width=width, height=height, background="#ffffff", highlightthickness=0, borderwidth=0
)
canvas.pack()
for x, y, colour in SQUARES:
    canvas.create_rectangle(x, y, x + 50, y + 50, fill=colour, outline=colour, width=0)
canvas.bind("<ButtonPress>", lambda e: record("press", e, button=e.num))
canvas.bind("<ButtonRelease>", lambda e: record("release", e, button=e.num))
canvas.bind("<B1-Motion>", lambda e: record("drag", e))


def key(event):
    record("key", event, keysym=event.keysym)
    if event.keysym == "c":  # a visible change, for batches that end with a screenshot
        canvas.configure(background="#00ffff")


root.bind("<KeyPress>", key)
root.bind("<KeyRelease>", lambda e: record("key_up", e, keysym=e.keysym))


def ready():
    # Ready once the window manager made it full screen, at the top left.  (Focus comes
    # from a click: openbox may not focus a new window right after input to another.)
    placed = (root.winfo_rootx(), root.winfo_rooty(), root.winfo_width(), root.winfo_height())
    if placed != (0, 0, width, height):
        tries.append(1)
        if len(tries) % 20 == 0:  # openbox sometimes maps it maximized instead: ask again
            root.attributes("-fullscreen", False)
            root.attributes("-fullscreen", True)
        root.after(50, ready)
        return
    root.after(100, lambda: open(sys.argv[2], "w").close())


tries = []
root.after(100, ready)
root.mainloop()
