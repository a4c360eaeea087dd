/*
 * NeuroNova ingest: the "Upload DICOM File" dialog.
 *
 * The same file is used by the Orthanc Explorer extension and by the RIS dashboard
 * (/neuronova/app/index.html). Plain JavaScript, no dependency, no build step.
 *
 *   NeuroNovaUpload.open({onUploaded: function (summary) {...}, studyListLink: true})
 *
 * Each file is POSTed as the raw request body (Orthanc plugins cannot read multipart/form-data)
 * to <prefix>/neuronova/upload[/<patient ID>], a few files at a time; NIfTI volumes (.nii, .nii.gz) to the
 * same route (a new study of the chosen patient) or to <prefix>/neuronova/studies/<study>/nifti (new series
 * in the study chosen under "NIfTI volumes"). When something was stored,
 * the "neuronova:uploaded" event is dispatched on document.
 */
(function (window, document) {
  'use strict';

  if (window.NeuroNovaUpload) {
    return;
  }

  // This script is <prefix>/neuronova/app/upload-dialog.js: the API is <prefix>/neuronova/, whatever the prefix.
  var SCRIPT_URL = (document.currentScript && document.currentScript.src) || window.location.href;
  var API_BASE = new URL('../', SCRIPT_URL).href;
  var APP_BASE = new URL('./', SCRIPT_URL).href;

  var PARALLEL_UPLOADS = 3;
  var MAX_BUSY_RETRIES = 30;  // a busy server answers 503 with Retry-After; after these, the 503 is shown
  var PATIENT_LIMIT = 50;
  var SEARCH_DELAY_MS = 250;
  // The page's language (i18n.js, loaded first); without it, English.
  var I18N = window.NeuroNovaI18n || {
    lang: 'en',
    t: function (text, params) {
      return text.replace(/\{(\w+)\}/g, function (whole, key) { return params && key in params ? params[key] : whole; });
    },
    plural: function (count, noun) { return count + ' ' + noun + (count === 1 || noun === 'series' ? '' : 's'); },
    translatePage: function () {}
  };
  var t = I18N.t;
  var plural = I18N.plural;
  var REFUSED_MESSAGE = t('Please select a DICOM file (.dcm or .dicom)');
  var NO_PATIENT = t('No patient selected (use existing metadata)');
  var TAKEN_EXTENSIONS = {dcm: true, dicom: true, zip: true, nii: true};
  var STUDY_LIMIT = 200;
  var NEW_STUDY = t('A new study of the chosen patient');

  var TEMPLATE = [
    '<div class="nn-dialog-header ui-bar ui-bar-a">',
    '  <h2 id="nn-upload-title" class="nn-dialog-title" data-i18n>Upload DICOM File</h2>',
    '</div>',
    '<div class="nn-dialog-body">',
    '  <h3 class="nn-section-title" id="nn-upload-files-title" data-i18n>Select DICOM File</h3>',
    '  <div class="nn-drop ui-corner-all" id="nn-upload-drop" tabindex="0" role="button"',
    '       aria-describedby="nn-upload-drop-help">',
    '    <p id="nn-upload-drop-help" data-i18n>Drop DICOM files, a folder or a ZIP archive here',
    '      (.dcm, .dicom, .zip or files without an extension), NIfTI volumes (.nii, .nii.gz), or</p>',
    '    <div class="nn-drop-buttons">',
    '      <button type="button" class="nn-btn nn-theme-c" id="nn-upload-choose-files" data-i18n>Choose files</button>',
    '      <button type="button" class="nn-btn nn-theme-c" id="nn-upload-choose-folder" data-i18n>Choose folder</button>',
    '    </div>',
    '    <input type="file" id="nn-upload-files" class="nn-hidden-input" multiple tabindex="-1"',
    '           aria-labelledby="nn-upload-files-title">',
    '    <input type="file" id="nn-upload-folder" class="nn-hidden-input" multiple webkitdirectory tabindex="-1"',
    '           aria-label="Select a folder" data-i18n-attr="aria-label">',
    '  </div>',
    '  <div class="nn-refused nn-msg nn-msg-error" id="nn-upload-refused" role="alert" hidden>',
    '    <p class="nn-refused-message" id="nn-upload-refused-message"></p>',
    '    <p class="nn-refused-names" id="nn-upload-refused-names"></p>',
    '  </div>',
    '  <ul class="nn-files" id="nn-upload-file-list" aria-label="Files to upload" data-i18n-attr="aria-label"></ul>',
    '  <p class="nn-files-summary" id="nn-upload-files-summary" aria-live="polite"></p>',
    '  <label class="nn-section-title" for="nn-upload-patient-search" data-i18n>Assign to Patient (Optional)</label>',
    '  <input type="search" id="nn-upload-patient-search" class="nn-input ui-input-text ui-body-c ui-corner-all',
    '         ui-shadow-inset" placeholder="Search patient..." autocomplete="off" aria-controls="nn-upload-patient"',
    '         data-i18n-attr="placeholder">',
    '  <select id="nn-upload-patient" class="nn-input nn-select ui-body-c ui-corner-all ui-shadow-inset"',
    '          aria-label="Patient" data-i18n-attr="aria-label"></select>',
    '  <p class="nn-patient-status" id="nn-upload-patient-status" aria-live="polite"></p>',
    '  <fieldset class="nn-nifti" id="nn-upload-nifti" hidden>',
    '    <legend class="nn-section-title" data-i18n>NIfTI volumes</legend>',
    '    <label for="nn-upload-study" data-i18n>Put them in</label>',
    '    <select id="nn-upload-study" class="nn-input nn-select ui-body-c ui-corner-all ui-shadow-inset"></select>',
    '    <label class="nn-check"><input type="checkbox" id="nn-upload-nifti-labels">',
    '      <span data-i18n>Label map (stored as a Segmentation of a series of that study)</span></label>',
    '    <label class="nn-check"><input type="checkbox" id="nn-upload-nifti-volumes">',
    '      <span data-i18n>4-D file: one series per volume</span></label>',
    '  </fieldset>',
    '  <div class="nn-overall" id="nn-upload-overall" hidden>',
    '    <p class="nn-overall-title" id="nn-upload-overall-title" data-i18n>Uploading...</p>',
    '    <div class="nn-progress ui-corner-all" id="nn-upload-overall-progress" role="progressbar"',
    '         aria-valuemin="0" aria-valuemax="100" aria-valuenow="0" aria-label="Overall progress"',
    '         data-i18n-attr="aria-label">',
    '      <div class="nn-progress-bar"></div><span class="nn-progress-label"></span>',
    '    </div>',
    '  </div>',
    '  <div class="nn-msg nn-msg-success" id="nn-upload-success" role="status" hidden></div>',
    '  <div class="nn-msg nn-msg-error" id="nn-upload-errors" role="alert" hidden></div>',
    '  <div class="nn-msg nn-msg-warning" id="nn-upload-notice" role="status" hidden></div>',
    '</div>',
    '<div class="nn-dialog-footer">',
    '  <button type="button" class="nn-btn nn-theme-c" id="nn-upload-cancel" data-i18n>Cancel</button>',
    '  <button type="button" class="nn-btn nn-theme-b" id="nn-upload-start" disabled data-i18n>Upload</button>',
    '</div>'
  ].join('\n');

  // ---------------------------------------------------------------- helpers

  function formatBytes(bytes) {
    if (bytes < 1024) {
      return bytes + ' B';
    }
    var units = ['KB', 'MB', 'GB', 'TB'];
    var value = bytes, unit = -1;
    do {
      value /= 1024;
      unit += 1;
    } while (value >= 1024 && unit < units.length - 1);
    return (value >= 100 ? value.toFixed(0) : value.toFixed(1)) + ' ' + units[unit];
  }

  /** .dcm, .dicom, .zip, and names without an extension (a purely numeric one, as in a UID, counts as none). */
  function isTaken(name) {
    var base = name.split('/').pop();
    var dot = base.lastIndexOf('.');
    if (dot <= 0) {
      return true;
    }
    var extension = base.slice(dot + 1).toLowerCase();
    return TAKEN_EXTENSIONS[extension] === true || isNifti(base) || /^[0-9]+$/.test(extension);
  }

  function isNifti(name) {
    return /\.nii(\.gz)?$/i.test(name);
  }

  function isZip(name) {
    return /\.zip$/i.test(name);
  }

  function isHidden(name) {
    return name.split('/').some(function (part) { return part.charAt(0) === '.'; });
  }

  /** The Explorer's way to pass an authorization token in the URL (?token=...), copied as a header. */
  function tokenHeaders() {
    var headers = {};
    var query = window.location.search.substring(1).split('&');
    for (var i = 0; i < query.length; i++) {
      var pair = query[i].split('=');
      if (pair.length === 2 && (pair[0] === 'token' || pair[0] === 'auth-token' || pair[0] === 'authorization')) {
        headers[pair[0]] = decodeURIComponent(pair[1]);
      }
    }
    return headers;
  }

  function setHeaders(xhr) {
    var headers = tokenHeaders();
    for (var name in headers) {
      if (Object.prototype.hasOwnProperty.call(headers, name)) {
        xhr.setRequestHeader(name, headers[name]);
      }
    }
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (error) {
      return null;
    }
  }

  /** The error text of a failed request: the plugin's "error", Orthanc's own "Message", or the HTTP status. */
  function errorText(xhr, answer) {
    if (answer && typeof answer.error === 'string' && answer.error) {
      return answer.error;
    }
    if (answer && typeof answer.Message === 'string') {
      return answer.Message + (answer.Details ? ' (' + answer.Details + ')' : '');
    }
    if (xhr.status === 0) {
      return t('the server did not answer (connection lost or refused)');
    }
    if (xhr.status === 401 || xhr.status === 403) {
      return t('not authorized (HTTP {status}): log in to Orthanc again', {status: xhr.status});
    }
    return 'HTTP ' + xhr.status + (xhr.statusText ? ' ' + xhr.statusText : '');
  }

  /** Files of a drop, folders walked recursively (each File gets relativePath). */
  function droppedFiles(dataTransfer) {
    var items = dataTransfer.items;
    if (!items || !items.length || typeof items[0].webkitGetAsEntry !== 'function') {
      return Promise.resolve(Array.prototype.slice.call(dataTransfer.files || []));
    }
    var entries = [];
    for (var i = 0; i < items.length; i++) {
      var entry = items[i].kind === 'file' ? items[i].webkitGetAsEntry() : null;
      if (entry) {
        entries.push(entry);
      }
    }
    return Promise.all(entries.map(walkEntry)).then(function (lists) {
      return [].concat.apply([], lists);
    });
  }

  function walkEntry(entry) {
    if (entry.isFile) {
      return new Promise(function (resolve) {
        entry.file(function (file) {
          file.relativePath = entry.fullPath.replace(/^\//, '');
          resolve([file]);
        }, function () { resolve([]); });
      });
    }
    var reader = entry.createReader();
    var all = [];
    return new Promise(function (resolve) {
      (function readMore() {  // readEntries answers in chunks until it answers nothing
        reader.readEntries(function (chunk) {
          if (!chunk.length) {
            Promise.all(all.map(walkEntry)).then(function (lists) { resolve([].concat.apply([], lists)); });
            return;
          }
          all = all.concat(Array.prototype.slice.call(chunk));
          readMore();
        }, function () { resolve([]); });
      })();
    });
  }

  /** Buttons with jQuery Mobile's classes (as Orthanc Explorer draws them), hover state included. */
  function styleButton(button) {
    var theme = button.classList.contains('nn-theme-b') ? 'b' : 'c';
    var text = button.textContent;
    button.className += ' ui-btn ui-btn-up-' + theme + ' ui-shadow ui-btn-corner-all ui-btn-inline';
    button.innerHTML = '';
    var inner = document.createElement('span');
    inner.className = 'ui-btn-inner ui-btn-corner-all';
    var label = document.createElement('span');
    label.className = 'ui-btn-text';
    label.textContent = text;
    inner.appendChild(label);
    button.appendChild(inner);
    button.addEventListener('mouseenter', function () {
      button.classList.replace('ui-btn-up-' + theme, 'ui-btn-hover-' + theme);
    });
    button.addEventListener('mouseleave', function () {
      button.classList.replace('ui-btn-hover-' + theme, 'ui-btn-up-' + theme);
    });
  }

  function setButtonText(button, text) {
    button.querySelector('.ui-btn-text').textContent = text;
  }

  function setProgress(element, fraction, label) {
    var percent = Math.max(0, Math.min(100, Math.round(fraction * 100)));
    element.querySelector('.nn-progress-bar').style.width = percent + '%';
    element.setAttribute('aria-valuenow', String(percent));
    if (label !== undefined) {
      element.querySelector('.nn-progress-label').textContent = label;
      element.setAttribute('aria-valuetext', label);
    }
  }

  // ---------------------------------------------------------------- the dialog

  function UploadDialog() {
    var dialog = document.createElement('dialog');
    dialog.id = 'nn-upload-dialog';
    dialog.className = 'nn-dialog ui-body-c ui-corner-all ui-shadow';
    dialog.setAttribute('aria-labelledby', 'nn-upload-title');
    dialog.innerHTML = TEMPLATE;
    dialog.lang = I18N.lang;
    I18N.translatePage(dialog);
    document.body.appendChild(dialog);
    this.dialog = dialog;
    this.el = function (id) { return dialog.querySelector('#nn-upload-' + id); };
    Array.prototype.forEach.call(dialog.querySelectorAll('.nn-btn'), styleButton);
    this.entries = [];
    this.running = false;
    this.cancelled = false;
    this.options = {};
    this.bind();
  }

  UploadDialog.prototype.bind = function () {
    var self = this, el = this.el;
    var drop = el('drop');

    el('choose-files').addEventListener('click', function () { el('files').click(); });
    el('choose-folder').addEventListener('click', function () { el('folder').click(); });
    drop.addEventListener('keydown', function (event) {
      if ((event.key === 'Enter' || event.key === ' ') && event.target === drop) {
        event.preventDefault();
        el('files').click();
      }
    });
    ['files', 'folder'].forEach(function (id) {
      el(id).addEventListener('change', function (event) {
        self.addFiles(Array.prototype.slice.call(event.target.files), id === 'folder');
        event.target.value = '';  // choosing the same file again fires "change" again
      });
    });
    drop.addEventListener('dragover', function (event) {
      event.preventDefault();
      event.dataTransfer.dropEffect = self.running ? 'none' : 'copy';
      drop.classList.add('nn-drop-active');
    });
    drop.addEventListener('dragleave', function () { drop.classList.remove('nn-drop-active'); });
    drop.addEventListener('drop', function (event) {
      event.preventDefault();
      drop.classList.remove('nn-drop-active');
      if (self.running) {
        return;
      }
      var fromFolder = false;
      var items = event.dataTransfer.items || [];
      for (var i = 0; i < items.length; i++) {
        var entry = items[i].webkitGetAsEntry ? items[i].webkitGetAsEntry() : null;
        fromFolder = fromFolder || Boolean(entry && entry.isDirectory);
      }
      droppedFiles(event.dataTransfer).then(function (files) { self.addFiles(files, fromFolder); });
    });

    var search = el('patient-search');
    search.addEventListener('input', function () {
      clearTimeout(self.searchTimer);
      self.searchTimer = setTimeout(function () { self.searchPatients(search.value); }, SEARCH_DELAY_MS);
    });
    search.addEventListener('keydown', function (event) {
      if (event.key === 'Enter') {
        event.preventDefault();
        clearTimeout(self.searchTimer);
        self.searchPatients(search.value);
      } else if (event.key === 'ArrowDown') {
        event.preventDefault();
        el('patient').focus();
      }
    });

    el('start').addEventListener('click', function () { self.start(); });
    el('cancel').addEventListener('click', function () { self.cancelOrClose(); });
    // Escape: like the Cancel button (stop the upload first, close when nothing runs).
    this.dialog.addEventListener('cancel', function (event) {
      event.preventDefault();
      self.cancelOrClose();
    });
  };

  UploadDialog.prototype.open = function (options) {
    this.options = options || {};
    this.opener = document.activeElement;
    if (!this.running) {
      this.reset();
    }
    if (!this.dialog.open) {
      this.dialog.showModal();
    }
    this.el('choose-files').focus();
  };

  UploadDialog.prototype.close = function () {
    this.dialog.close();
    if (this.opener && typeof this.opener.focus === 'function') {
      this.opener.focus();
    }
  };

  UploadDialog.prototype.reset = function () {
    var el = this.el;
    this.entries = [];
    this.finished = false;
    el('file-list').innerHTML = '';
    el('refused').hidden = true;
    el('overall').hidden = true;
    ['success', 'errors', 'notice'].forEach(function (id) { el(id).hidden = true; el(id).innerHTML = ''; });
    el('patient-search').value = '';
    el('patient').innerHTML = '';
    el('patient').appendChild(new Option(NO_PATIENT, ''));
    el('study').innerHTML = '';
    el('study').appendChild(new Option(NEW_STUDY, ''));
    el('nifti-labels').checked = el('nifti-volumes').checked = false;
    this.studiesLoaded = false;
    this.selected = null;
    this.searchPatients('');
    this.update();
  };

  // ---------------------------------------------------------------- files

  UploadDialog.prototype.addFiles = function (files, fromFolder) {
    var refused = [];
    var known = {};
    this.entries.forEach(function (entry) { known[entry.key] = true; });
    if (this.finished) {  // a new choice after an upload starts a new batch
      this.entries = this.entries.filter(function (entry) { return entry.state !== 'done'; });
      this.el('file-list').innerHTML = '';
      this.entries.forEach(function (entry) { this.el('file-list').appendChild(entry.row); }, this);
      this.finished = false;
    }
    var pathOf = function (file) { return file.relativePath || file.webkitRelativePath || file.name; };
    files = files.slice().sort(function (a, b) {  // in path order as a file manager shows it (IM2 before IM10)
      return pathOf(a).localeCompare(pathOf(b), 'en', {numeric: true, sensitivity: 'base'});
    });
    for (var i = 0; i < files.length; i++) {
      var file = files[i];
      var name = pathOf(file);
      if (fromFolder && (isHidden(name) || /(^|\/)DICOMDIR$/i.test(name))) {
        continue;  // .DS_Store and the like, and the folder's index: not images
      }
      if (!isTaken(name)) {
        refused.push(name);
        continue;
      }
      var key = name + '|' + file.size + '|' + file.lastModified;
      if (known[key]) {
        continue;
      }
      known[key] = true;
      this.addEntry(file, name, key);
    }
    var box = this.el('refused');
    if (refused.length) {
      this.el('refused-message').textContent = REFUSED_MESSAGE;
      this.el('refused-names').textContent = t('Not taken: {names}', {names: refused.join(', ')});
      box.hidden = false;
    } else {
      box.hidden = true;
    }
    this.update();
  };

  UploadDialog.prototype.addEntry = function (file, name, key) {
    var self = this;
    var row = document.createElement('li');
    row.className = 'nn-file ui-corner-all';
    row.setAttribute('data-state', 'ready');
    row.innerHTML = '<div class="nn-file-line"><span class="nn-file-name"></span>' +
      '<span class="nn-file-size"></span>' +
      '<button type="button" class="nn-file-remove"></button></div>' +
      '<div class="nn-progress nn-progress-small ui-corner-all" role="progressbar" aria-valuemin="0"' +
      ' aria-valuemax="100" aria-valuenow="0"><div class="nn-progress-bar"></div>' +
      '<span class="nn-progress-label"></span></div><span class="nn-file-status"></span>';
    row.querySelector('.nn-file-name').textContent = name;
    row.querySelector('.nn-file-size').textContent = formatBytes(file.size);
    row.querySelector('.nn-progress').setAttribute('aria-label', t('Progress of {name}', {name: name}));
    var entry = {file: file, name: name, key: key, row: row, state: 'ready', sent: 0, xhr: null};
    var remove = row.querySelector('.nn-file-remove');
    remove.textContent = t('Remove');
    remove.setAttribute('aria-label', t('Remove {name}', {name: name}));
    remove.addEventListener('click', function () {
      self.entries.splice(self.entries.indexOf(entry), 1);
      row.remove();
      self.update();
      self.el('choose-files').focus();
    });
    this.entries.push(entry);
    this.el('file-list').appendChild(row);
  };

  UploadDialog.prototype.setState = function (entry, state, status, fraction) {
    entry.state = state;
    entry.row.setAttribute('data-state', state);
    entry.row.querySelector('.nn-file-status').textContent = status;
    if (fraction !== undefined) {
      setProgress(entry.row.querySelector('.nn-progress'), fraction);
    }
  };

  UploadDialog.prototype.pending = function () {
    return this.entries.filter(function (entry) {
      return entry.state === 'ready' || entry.state === 'failed' || entry.state === 'cancelled';
    });
  };

  /** Buttons, the summary line and the overall progress bar after any change. */
  UploadDialog.prototype.update = function () {
    var el = this.el;
    var total = 0;
    this.entries.forEach(function (entry) { total += entry.file.size; });
    el('files-summary').textContent = this.entries.length
      ? t('{files}, {size}', {files: plural(this.entries.length, 'file'), size: formatBytes(total)})
      : t('No file selected.');
    var start = el('start');
    start.disabled = this.running || this.pending().length === 0;
    start.classList.toggle('ui-disabled', start.disabled);
    setButtonText(start, t(this.running ? 'Uploading...' : 'Upload'));
    setButtonText(el('cancel'), t(this.running || !this.finished ? 'Cancel' : 'Close'));
    this.dialog.classList.toggle('nn-running', this.running);
    el('choose-files').disabled = el('choose-folder').disabled = this.running;
    el('patient-search').disabled = el('patient').disabled = this.running;
    var nifti = this.entries.some(function (entry) { return isNifti(entry.name); });
    el('nifti').hidden = !nifti;
    el('study').disabled = el('nifti-labels').disabled = el('nifti-volumes').disabled = this.running;
    if (nifti && !this.studiesLoaded) {
      this.studiesLoaded = true;
      this.loadStudies();
    }
    if (this.running) {
      this.updateOverall();
    }
  };

  UploadDialog.prototype.updateOverall = function () {
    var batch = this.batch;
    var sent = 0, answered = 0;
    batch.forEach(function (entry) {
      sent += entry.sent;
      answered += entry.state === 'done' || entry.state === 'failed' || entry.state === 'cancelled' ? 1 : 0;
    });
    var bytes = this.batchBytes || 1;
    var label = t('{answered} of {files} done, {sent} of {total} sent', {
      answered: answered, files: plural(batch.length, 'file'), sent: formatBytes(sent),
      total: formatBytes(this.batchBytes)});
    // Bytes sent drive the bar; the last per cent waits for the server's answers.
    var fraction = answered === batch.length ? 1 : Math.min(sent / bytes, 0.99);
    setProgress(this.el('overall-progress'), fraction, label);
  };

  // ---------------------------------------------------------------- studies (NIfTI destination)

  UploadDialog.prototype.loadStudies = function () {
    var select = this.el('study');
    var xhr = new XMLHttpRequest();
    xhr.open('GET', API_BASE + 'studies?limit=' + STUDY_LIMIT);
    setHeaders(xhr);
    xhr.onload = function () {
      var answer = parseJson(xhr.responseText);
      (answer && answer.success ? answer.studies : []).forEach(function (study) {
        var label = study.patient_id + ' - ' + study.patient_name + ' - ' + (study.study_date || t('no date')) +
          (study.study_description ? ' - ' + study.study_description : '') + ' (' +
          plural(study.series_count, 'series') + ')';
        select.appendChild(new Option(label, study.id));
      });
    };
    xhr.send();
  };

  // ---------------------------------------------------------------- patients

  UploadDialog.prototype.searchPatients = function (text) {
    var self = this, el = this.el;
    var sequence = (this.searchSequence = (this.searchSequence || 0) + 1);
    if (this.searchXhr) {
      this.searchXhr.abort();
    }
    var xhr = new XMLHttpRequest();
    this.searchXhr = xhr;
    xhr.open('GET', API_BASE + 'patients?search=' + encodeURIComponent(text.trim()) + '&limit=' + PATIENT_LIMIT);
    setHeaders(xhr);
    xhr.onload = function () {
      if (sequence !== self.searchSequence) {
        return;
      }
      var answer = parseJson(xhr.responseText);
      if (xhr.status !== 200 || !answer || !answer.success) {
        el('patient-status').textContent = t('Could not load the patient list: {error}', {error: errorText(xhr, answer)});
        el('patient-status').classList.add('nn-text-error');
        return;
      }
      self.fillPatients(answer.patients, answer.total);
    };
    xhr.onerror = function () {
      if (sequence === self.searchSequence) {
        el('patient-status').textContent = t('Could not load the patient list: {error}', {error: errorText(xhr, null)});
        el('patient-status').classList.add('nn-text-error');
      }
    };
    xhr.send();
  };

  function patientLabel(patient) {
    return patient.patient_id + ' - ' + patient.name + (patient.birth_date ? ' (' + patient.birth_date + ')' : '');
  }

  UploadDialog.prototype.fillPatients = function (patients, total) {
    var select = this.el('patient');
    var chosen = select.value;
    var keep = null;  // the chosen patient stays listed, so a new search never drops the choice silently
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === chosen && chosen) {
        keep = select.options[i];
      }
    }
    select.innerHTML = '';
    select.appendChild(new Option(NO_PATIENT, ''));
    var listed = {};
    patients.forEach(function (patient) {
      listed[patient.patient_id] = true;
      select.appendChild(new Option(patientLabel(patient), patient.patient_id));
    });
    if (keep && !listed[keep.value]) {
      select.insertBefore(new Option(keep.text, keep.value), select.options[1] || null);
    }
    select.value = chosen && (keep || listed[chosen]) ? chosen : '';
    var status = this.el('patient-status');
    status.classList.remove('nn-text-error');
    status.textContent = total > patients.length
      ? t('Showing {shown} of {total} patients: type to narrow the list.', {shown: patients.length, total: total})
      : t('{patients} found.', {patients: plural(patients.length, 'patient')});
  };

  // ---------------------------------------------------------------- uploading

  UploadDialog.prototype.start = function () {
    var self = this;
    var queue = this.pending();
    if (this.running || !queue.length) {
      return;
    }
    var el = this.el;
    this.patientId = el('patient').value;
    this.niftiStudy = el('study').value;
    this.niftiLabels = el('nifti-labels').checked;
    this.niftiVolumes = el('nifti-volumes').checked;
    this.running = true;
    this.cancelled = false;
    this.finished = false;
    this.batch = queue.slice();
    this.batchBytes = 0;
    this.queue = queue;
    queue.forEach(function (entry) {
      entry.sent = 0;
      entry.retries = 0;
      entry.result = null;
      self.batchBytes += entry.file.size;
      self.setState(entry, 'queued', t('Waiting'), 0);
    });
    ['success', 'errors', 'notice'].forEach(function (id) { el(id).hidden = true; el(id).innerHTML = ''; });
    el('overall').hidden = false;
    el('overall-title').textContent = t('Uploading...');
    this.active = 0;
    this.waiting = 0;
    this.update();
    this.next();
  };

  UploadDialog.prototype.next = function () {
    while (!this.cancelled && this.active < PARALLEL_UPLOADS && this.queue.length) {
      this.send(this.queue.shift());
    }
    if (this.active === 0 && !this.waiting && (this.cancelled || !this.queue.length)) {
      this.finish();
    }
  };

  UploadDialog.prototype.send = function (entry) {
    var self = this;
    var xhr = new XMLHttpRequest();
    entry.xhr = xhr;
    this.active += 1;
    var nifti = isNifti(entry.name);
    var url = nifti && this.niftiStudy ? API_BASE + 'studies/' + encodeURIComponent(this.niftiStudy) + '/nifti'
      : API_BASE + 'upload' + (this.patientId ? '/' + encodeURIComponent(this.patientId) : '');
    xhr.open('POST', url);
    xhr.setRequestHeader('Content-Type', nifti ? 'application/octet-stream'
      : isZip(entry.name) ? 'application/zip' : 'application/dicom');
    if (nifti) {  // the options of the NIfTI import (nifti/service.py)
      xhr.setRequestHeader('X-NeuroNova-Filename', encodeURIComponent(entry.name.split('/').pop()));
      if (this.niftiLabels) {
        xhr.setRequestHeader('X-NeuroNova-Nifti-Content', 'labels');
      }
      if (this.niftiVolumes) {
        xhr.setRequestHeader('X-NeuroNova-Nifti-Volumes', 'separate');
      }
    }
    setHeaders(xhr);
    xhr.upload.onprogress = function (event) {
      entry.sent = event.loaded;
      var fraction = event.total ? event.loaded / event.total : 0;
      self.setState(entry, 'sending', t('Sending {percent}%', {percent: Math.round(fraction * 100)}), fraction);
      self.updateOverall();
    };
    xhr.upload.onload = function () {
      entry.sent = entry.file.size;
      self.setState(entry, 'processing', t('Sent, processing on the server...'), 1);
      self.updateOverall();
    };
    var settle = function (handler) {
      return function () {
        if (entry.xhr !== xhr) {
          return;
        }
        entry.xhr = null;
        handler();
        self.active -= 1;
        self.update();
        self.next();
      };
    };
    xhr.onload = settle(function () {
      if (xhr.status === 503 && xhr.getResponseHeader('Retry-After') && (entry.retries || 0) < MAX_BUSY_RETRIES) {
        self.retryLater(entry, parseInt(xhr.getResponseHeader('Retry-After'), 10) || 2);
      } else {
        self.answered(entry, xhr);
      }
    });
    xhr.onerror = settle(function () { self.failed(entry, errorText(xhr, null)); });
    xhr.ontimeout = xhr.onerror;
    xhr.onabort = settle(function () {
      var maybeStored = entry.state === 'processing';
      self.setState(entry, 'cancelled', t(maybeStored
        ? 'Cancelled after sending: the server may have stored it' : 'Cancelled'));
    });
    this.setState(entry, 'sending', t('Sending {percent}%', {percent: 0}), 0);
    xhr.send(entry.file);
  };

  // The server is busy (503 with Retry-After): the file goes back in the queue after the wait.
  UploadDialog.prototype.retryLater = function (entry, seconds) {
    var self = this;
    entry.retries = (entry.retries || 0) + 1;
    this.setState(entry, 'queued', t('Server busy: sending again in {seconds} s', {seconds: seconds}), 0);
    this.waiting = (this.waiting || 0) + 1;
    setTimeout(function () {
      self.waiting -= 1;
      if (!self.cancelled) {
        self.queue.push(entry);
      }
      self.next();
    }, seconds * 1000);
  };

  UploadDialog.prototype.answered = function (entry, xhr) {
    var answer = parseJson(xhr.responseText);
    if (!answer) {
      this.failed(entry, errorText(xhr, null));
      return;
    }
    var result = {stored: 0, already: 0, failures: [], patients: []};
    if (Array.isArray(answer.results)) {  // a ZIP archive: one result per member
      answer.results.forEach(function (member) {
        if (member.success) {
          result.stored += 1;
          if (member.orthanc_response && member.orthanc_response.Status === 'AlreadyStored') {
            result.already += 1;
          }
          if (member.patient_id) {
            result.patients.push(member.patient_id);
          }
        } else {
          result.failures.push(member.file + ': ' + member.error);
        }
      });
    } else if (xhr.status === 200 && answer.success && Array.isArray(answer.series)) {  // a NIfTI volume
      result.stored = answer.instance_count;
      result.series = answer.series.length;
      if (answer.patient_id) {
        result.patients.push(answer.patient_id);
      }
    } else if (xhr.status === 200 && answer.success) {
      result.stored = 1;
      if (answer.orthanc_response && answer.orthanc_response.Status === 'AlreadyStored') {
        result.already = 1;
      }
      if (answer.patient_id) {
        result.patients.push(answer.patient_id);
      }
    }
    if (xhr.status !== 200 && !result.failures.length) {
      result.failures.push(errorText(xhr, answer));
    }
    entry.result = result;
    if (result.failures.length && !result.stored) {
      this.setState(entry, 'failed', t('Failed: {error}', {error: result.failures.length === 1 ? result.failures[0]
        : t('{files} refused', {files: plural(result.failures.length, 'file')})}), 1);
    } else if (result.failures.length) {
      this.setState(entry, 'failed', t('{stored} stored, {failed} failed',
        {stored: result.stored, failed: result.failures.length}), 1);
    } else {
      this.setState(entry, 'done', result.series
        ? t('{series} of {instances} stored', {series: plural(result.series, 'series'),
                                               instances: plural(result.stored, 'instance')})
        : result.stored > 1 ? t('{instances} stored', {instances: plural(result.stored, 'instance')})
        : t(result.already ? 'Already stored' : 'Stored'), 1);
    }
  };

  UploadDialog.prototype.failed = function (entry, message) {
    entry.result = {stored: 0, already: 0, failures: [message], patients: []};
    this.setState(entry, 'failed', t('Failed: {error}', {error: message}), 1);
  };

  UploadDialog.prototype.cancelOrClose = function () {
    if (!this.running) {
      this.close();
      return;
    }
    this.cancelled = true;
    var self = this;
    this.queue.forEach(function (entry) { self.setState(entry, 'cancelled', t('Cancelled (not sent)'), 0); });
    this.queue = [];
    this.entries.forEach(function (entry) {
      if (entry.xhr) {
        entry.xhr.abort();
      }
    });
    this.next();
  };

  UploadDialog.prototype.finish = function () {
    if (!this.running) {
      return;
    }
    var el = this.el;
    this.running = false;
    this.finished = true;
    var stored = 0, already = 0, filesOk = 0, patients = {}, failures = [], cancelled = 0;
    this.batch.forEach(function (entry) {
      if (entry.state === 'cancelled') {
        cancelled += 1;
      }
      if (!entry.result) {
        return;
      }
      stored += entry.result.stored;
      already += entry.result.already;
      filesOk += entry.result.stored ? 1 : 0;  // a ZIP with some members stored counts here too
      entry.result.patients.forEach(function (id) { patients[id] = true; });
      entry.result.failures.forEach(function (text) {
        failures.push({file: entry.name, error: text});
      });
    });
    el('overall-title').textContent = t(this.cancelled ? 'Upload cancelled.' : 'Upload finished.');
    this.updateOverall();

    var patientIds = this.patientId ? [this.patientId] : Object.keys(patients);
    if (stored) {
      var text = t('Uploaded and converted successfully: {files}, {instances} stored',
                   {files: plural(filesOk, 'file'), instances: plural(stored, 'instance')}) +
        (already ? t(' ({count} already stored)', {count: already}) : '') +
        (patientIds.length ? t(' for patient {ids}', {ids: patientIds.join(', ')}) : '') + '.';
      var success = el('success');
      success.textContent = text;
      if (this.options.studyListLink) {
        var link = document.createElement('a');
        link.href = APP_BASE + 'index.html';
        link.rel = 'external';  // jQuery Mobile must not load it as one of its pages
        link.setAttribute('data-ajax', 'false');
        link.textContent = t('Open the study list');
        success.appendChild(document.createTextNode(' '));
        success.appendChild(link);
      }
      success.hidden = false;
    }
    if (failures.length) {
      var box = el('errors');
      var title = document.createElement('p');
      title.textContent = t('{files} failed:', {files: plural(failures.length, 'file')});
      box.appendChild(title);
      var list = document.createElement('ul');
      failures.forEach(function (failure) {
        var item = document.createElement('li');
        var name = document.createElement('strong');
        name.textContent = failure.file;
        item.appendChild(name);
        item.appendChild(document.createTextNode(': ' + failure.error));
        list.appendChild(item);
      });
      box.appendChild(list);
      box.hidden = false;
    }
    if (cancelled) {
      el('notice').textContent = t(cancelled === 1
        ? 'Upload cancelled: {files} not uploaded. Press Upload to send it again.'
        : 'Upload cancelled: {files} not uploaded. Press Upload to send them again.', {files: plural(cancelled, 'file')});
      el('notice').hidden = false;
    }
    this.update();
    var shown = el(failures.length ? 'errors' : cancelled ? 'notice' : 'success');
    shown.scrollIntoView({block: 'nearest'});
    var summary = {stored: stored, alreadyStored: already, failed: failures.length, cancelled: cancelled,
                   patientIds: patientIds};
    if (stored) {
      if (typeof this.options.onUploaded === 'function') {
        this.options.onUploaded(summary);
      }
      document.dispatchEvent(new CustomEvent('neuronova:uploaded', {detail: summary}));
    }
    el('start').disabled ? el('cancel').focus() : el('start').focus();
  };

  var instance = null;

  window.NeuroNovaUpload = {
    apiBase: API_BASE,
    appBase: APP_BASE,
    refusedMessage: REFUSED_MESSAGE,
    isTaken: isTaken,
    formatBytes: formatBytes,
    styleButton: styleButton,
    open: function (options) {
      instance = instance || new UploadDialog();
      instance.open(options);
      return instance;
    }
  };
})(window, document);
