// PrexorCloud dashboard: an instance's live console (the project's own file, no dependencies).
// Follows the console stream of #console[data-stream] (history first, then each new line), sends
// the command form to #console[data-command] with the session's CSRF token, keeps the commands
// sent for ↑/↓, and scrolls to the newest line while "Auto-scroll" is ticked.
(function () {
  'use strict';
  const root = document.getElementById('console');
  if (!root) return;
  const lines = document.getElementById('console-lines');
  const status = document.getElementById('console-status');
  const follow = document.getElementById('console-follow');
  const form = document.getElementById('console-form');
  const input = document.getElementById('console-input');
  const result = document.getElementById('console-result');
  const KEPT = 5000;

  function csrf() {
    try {
      return JSON.parse(document.body.getAttribute('hx-headers') || '{}')['X-CSRF-Token'] || '';
    } catch (_) {
      return '';
    }
  }

  function scroll() {
    if (follow && follow.checked) lines.scrollTop = lines.scrollHeight;
  }

  function append(text) {
    const line = document.createElement('div');
    line.className = 'line';
    line.textContent = text;
    lines.appendChild(line);
    while (lines.childElementCount > KEPT) lines.removeChild(lines.firstElementChild);
    scroll();
  }

  const stream = new EventSource(root.dataset.stream);
  stream.onopen = () => { status.textContent = 'Following the console live.'; };
  stream.onmessage = (event) => append(event.data);
  stream.addEventListener('error', (event) => {
    if (event.data) {
      status.textContent = event.data;
      stream.close();
    } else if (stream.readyState === EventSource.CLOSED) {
      status.textContent = 'The console stream closed; reload the page to follow it again.';
    } else {
      status.textContent = 'Reconnecting to the console…';
    }
  });
  if (follow) follow.addEventListener('change', scroll);

  if (!form) return;
  const history = [];
  let position = 0;
  let draft = '';

  input.addEventListener('keydown', (event) => {
    if (event.key === 'ArrowUp' && position > 0) {
      if (position === history.length) draft = input.value;
      position -= 1;
      input.value = history[position];
      event.preventDefault();
    } else if (event.key === 'ArrowDown' && position < history.length) {
      position += 1;
      input.value = position === history.length ? draft : history[position];
      event.preventDefault();
    }
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const command = input.value;
    if (!command.trim()) {
      result.textContent = 'Type a command first.';
      result.className = 'error';
      return;
    }
    if (history[history.length - 1] !== command) history.push(command);
    position = history.length;
    draft = '';
    input.value = '';
    result.textContent = 'Sending…';
    result.className = 'note';
    try {
      const response = await fetch(root.dataset.command, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded', 'X-CSRF-Token': csrf() },
        body: new URLSearchParams({ command }),
        credentials: 'same-origin',
      });
      const answer = new DOMParser().parseFromString(await response.text(), 'text/html');
      result.textContent = (answer.body.textContent || '').trim() || `HTTP ${response.status}`;
      result.className = response.ok ? 'ok' : 'error';
    } catch (err) {
      result.textContent = `The command was not sent: ${err}`;
      result.className = 'error';
    }
  });
})();
