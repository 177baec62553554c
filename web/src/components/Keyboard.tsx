//! Keyboard shortcuts (lib/keys.ts) wired to the page, and their help dialog.
import { useEffect, useRef, useState } from "preact/hooks";
import { isTyping, keyAction, moveIndex, SHORTCUTS } from "../lib/keys";

/** Rows that open something: a table body row with a link. */
function listRows(): HTMLTableRowElement[] {
  return Array.from(document.querySelectorAll<HTMLTableRowElement>("main table tbody tr")).filter((tr) => tr.querySelector("a[href]"));
}

/** Moves the highlight by `delta` rows; it stays on its row while live rows come and go. */
function moveHighlight(delta: number): void {
  const rows = listRows();
  const current = document.querySelector<HTMLTableRowElement>("main tr.kb-current");
  const at = moveIndex(current ? rows.indexOf(current) : -1, delta, rows.length);
  const next = rows[at];
  if (!next || next === current) return;
  current?.classList.remove("kb-current");
  current?.removeAttribute("aria-current");
  next.classList.add("kb-current");
  next.setAttribute("aria-current", "true");
  next.scrollIntoView({ block: "nearest" });
}

/** Focuses the list's search box; from a view without one, opens the jobs list first. */
function focusSearch(): void {
  const find = () => document.querySelector<HTMLInputElement>('main input[type="search"]');
  const box = find();
  if (box) {
    box.focus();
    box.select();
    return;
  }
  location.hash = "#/jobs";
  let tries = 0;
  const again = () => {
    const el = find();
    if (el) el.focus();
    else if (++tries < 50) setTimeout(again, 20);
  };
  setTimeout(again, 0);
}

export function KeyboardHost() {
  const [help, setHelp] = useState(false);
  const helpRef = useRef(help);
  helpRef.current = help;
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const target = e.target as HTMLElement | null;
      const action = keyAction({ key: e.key, ctrlKey: e.ctrlKey, metaKey: e.metaKey, altKey: e.altKey, typing: isTyping(target) });
      if (!action) return;
      if (action === "close") {
        if (helpRef.current) setHelp(false);
        return;
      }
      // Another dialog (confirm, token) has the keyboard.
      if (helpRef.current || document.querySelector(".modal-backdrop")) return;
      switch (action) {
        case "search":
          e.preventDefault();
          focusSearch();
          break;
        case "next":
        case "prev":
          moveHighlight(action === "next" ? 1 : -1);
          break;
        case "open": {
          // Enter on a link or a button keeps its own meaning.
          if (target?.closest("a, button, summary, [role=button]")) return;
          const link = document.querySelector<HTMLAnchorElement>("main tr.kb-current a[href]");
          if (!link) return;
          e.preventDefault();
          link.click();
          break;
        }
        case "help":
          e.preventDefault();
          setHelp(true);
          break;
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);
  return help ? <HelpDialog onClose={() => setHelp(false)} /> : null;
}

function HelpDialog({ onClose }: { onClose: () => void }) {
  const closeRef = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    const before = document.activeElement as HTMLElement | null;
    closeRef.current?.focus();
    // Focus goes back where it was when the dialog closes.
    return () => before?.focus?.();
  }, []);
  return (
    <div class="modal-backdrop" onClick={(e) => e.target === e.currentTarget && onClose()}>
      <div class="modal" role="dialog" aria-modal="true" aria-labelledby="keys-title" data-testid="help-dialog">
        <h3 id="keys-title">Keyboard shortcuts</h3>
        <table class="keys">
          <tbody>
            {SHORTCUTS.map((s) => (
              <tr key={s.what}>
                <td>
                  {s.keys.map((k) => (
                    <kbd key={k}>{k}</kbd>
                  ))}
                </td>
                <td>{s.what}</td>
              </tr>
            ))}
          </tbody>
        </table>
        <div class="modal-actions">
          <button ref={closeRef} class="btn" onClick={onClose}>
            Close
          </button>
        </div>
      </div>
    </div>
  );
}
