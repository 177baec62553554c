//! Page-wide overlays: confirmation dialog, toasts and the token prompt.
import { useEffect, useRef, useState } from "preact/hooks";

// --- confirmation -----------------------------------------------------------

interface ConfirmRequest {
  title: string;
  body: string;
  action: string;
  danger: boolean;
  resolve: (ok: boolean) => void;
}

let showConfirm: ((r: ConfirmRequest) => void) | undefined;

/** Asks the reader to confirm; resolves to their answer. */
export function confirmAction(opts: { title: string; body: string; action: string; danger?: boolean }): Promise<boolean> {
  return new Promise((resolve) => {
    if (!showConfirm) return resolve(window.confirm(opts.body));
    showConfirm({ ...opts, danger: opts.danger ?? false, resolve });
  });
}

export function ConfirmHost() {
  const [req, setReq] = useState<ConfirmRequest | undefined>();
  const okRef = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    showConfirm = setReq;
    return () => {
      showConfirm = undefined;
    };
  }, []);
  useEffect(() => {
    if (!req) return;
    okRef.current?.focus();
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") close(false);
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  });
  if (!req) return null;
  const close = (ok: boolean) => {
    setReq(undefined);
    req.resolve(ok);
  };
  return (
    <div class="modal-backdrop" onClick={(e) => e.target === e.currentTarget && close(false)}>
      <div class="modal" role="dialog" aria-modal="true" aria-labelledby="confirm-title">
        <h3 id="confirm-title">{req.title}</h3>
        <p>{req.body}</p>
        <div class="modal-actions">
          <button class="btn" onClick={() => close(false)}>
            Cancel
          </button>
          <button ref={okRef} class={`btn ${req.danger ? "btn-danger" : "btn-primary"}`} onClick={() => close(true)} data-testid="confirm-ok">
            {req.action}
          </button>
        </div>
      </div>
    </div>
  );
}

// --- toasts -------------------------------------------------------------------

interface Toast {
  id: number;
  text: string;
  tone: "ok" | "error";
}

let pushToast: ((t: Toast) => void) | undefined;
let toastSeq = 0;

export function toast(text: string, tone: "ok" | "error" = "ok"): void {
  pushToast?.({ id: ++toastSeq, text, tone });
}

export function ToastHost() {
  const [toasts, setToasts] = useState<Toast[]>([]);
  useEffect(() => {
    pushToast = (t) => {
      setToasts((ts) => [...ts.slice(-3), t]);
      setTimeout(() => setToasts((ts) => ts.filter((x) => x.id !== t.id)), t.tone === "error" ? 8000 : 4000);
    };
    return () => {
      pushToast = undefined;
    };
  }, []);
  const dismiss = (id: number) => setToasts((ts) => ts.filter((x) => x.id !== id));
  return (
    <div class="toasts" aria-live="polite">
      {toasts.map((t) => (
        <div key={t.id} class={`toast toast-${t.tone}`} data-testid="toast">
          <span class="toast-text">{t.text}</span>
          <button type="button" class="toast-close" aria-label="Dismiss" title="Dismiss" onClick={() => dismiss(t.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}

// --- token prompt -------------------------------------------------------------

export function TokenPrompt({ hadToken, onSave, onClose }: { hadToken: boolean; onSave: (token: string) => void; onClose: () => void }) {
  const [value, setValue] = useState("");
  const inputRef = useRef<HTMLInputElement>(null);
  useEffect(() => inputRef.current?.focus(), []);
  return (
    <div class="modal-backdrop">
      <form
        class="modal"
        role="dialog"
        aria-modal="true"
        aria-labelledby="token-title"
        onSubmit={(e) => {
          e.preventDefault();
          if (value.trim()) onSave(value.trim());
        }}
      >
        <h3 id="token-title">Sign in to jobq</h3>
        <p>
          {hadToken
            ? "The server refused the token you gave. Enter another one."
            : "This server requires a token. Paste an admin or producer token."}{" "}
          It is kept for this browser tab only.
        </p>
        <input
          ref={inputRef}
          class="input"
          type="password"
          autocomplete="off"
          placeholder="Token"
          aria-label="Token"
          value={value}
          onInput={(e) => setValue(e.currentTarget.value)}
          data-testid="token-input"
        />
        <div class="modal-actions">
          <button type="button" class="btn" onClick={onClose}>
            Not now
          </button>
          <button type="submit" class="btn btn-primary" disabled={!value.trim()}>
            Sign in
          </button>
        </div>
      </form>
    </div>
  );
}
