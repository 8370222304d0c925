// PrexorCloud dashboard: a layer upload form (the project's own file, no dependencies).
// Sends the chosen .tar.gz of form#upload-form as the request body itself (PUT to its
// /ui/templates/<name>/upload, with the session's CSRF token), so the server streams it to disk
// as the REST upload does; shows the answer (an HTML fragment of the server's) in #upload-result.
// The versions reload on the upload's event, like every live part.
(function () {
  'use strict';
  const form = document.getElementById('upload-form');
  if (!form) return;
  const file = form.querySelector('input[type=file]');
  const result = document.getElementById('upload-result');
  const button = form.querySelector('button[type=submit]');

  function csrf() {
    try {
      return JSON.parse(document.body.getAttribute('hx-headers') || '{}')['X-CSRF-Token'] || '';
    } catch (_) {
      return '';
    }
  }

  function say(cls, text) {
    const line = document.createElement('p');
    line.className = cls;
    line.textContent = text;
    result.replaceChildren(line);
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) {
      say('error', 'Choose a .tar.gz file first.');
      return;
    }
    button.disabled = true;
    say('note', `Uploading ${chosen.name} (${chosen.size} bytes)…`);
    try {
      const name = form.elements.name.value.trim();
      if (!name) {
        say('error', 'Name the template first.');
        return;
      }
      const response = await fetch(`/ui/templates/${encodeURIComponent(name)}/upload`, {
        method: 'PUT',
        headers: { 'Content-Type': 'application/gzip', 'X-CSRF-Token': csrf() },
        body: chosen,
        credentials: 'same-origin',
      });
      // The server's own fragment (escaped by its templates).
      result.innerHTML = await response.text();
      form.reset();
    } catch (err) {
      say('error', `The upload failed: ${err}`);
    } finally {
      button.disabled = false;
    }
  });
})();
