/*
 * NeuroNova RIS dashboard: the worklist (studies whose patient is not settled), the move dialog (a study to
 * an EMR patient, from the worklist or the study list) and the ingest history, as pages of the dashboard
 * (#studies, #worklist, #history). Uses dashboard.js's helpers (window.NeuroNovaDashboard).
 */
(function (window, document) {
  'use strict';

  var PAGE_BASE = new URL('./', window.location.href).href;            // <prefix>/neuronova/app/
  var WORKLIST_URL = new URL('../worklist', PAGE_BASE).href;
  var REVERIFY_URL = new URL('../worklist/reverify', PAGE_BASE).href;
  var HISTORY_URL = new URL('../history', PAGE_BASE).href;
  var PATIENTS_URL = new URL('../patients', PAGE_BASE).href;
  var ACTIONS = ['unmatched', 'unverified', 'conflict', 'moved', 'coerced', 'assigned', 'unchanged', 'rejected',
                 'recovered'];
  var WHY = {same_id: 'same ID under another issuer', received_id: 'an ID its images arrived with',
             same_name_and_birth_date: 'same name and birth date', same_name: 'same name',
             same_family_name_and_birth_date: 'same family name and birth date'};
  var HISTORY_PAGE = 50;
  var WORKLIST_PAGE = 50;
  var VIEWS = ['studies', 'worklist', 'history'];
  var WORKLIST_REFRESH_MS = 30000;

  var I18N = window.NeuroNovaI18n;
  var t = I18N.t;
  var plural = I18N.plural;
  var dashboard = window.NeuroNovaDashboard;
  var historyOffset = 0;
  var worklistOffset = 0;

  function $(id) { return document.getElementById(id); }

  function setMessage(id, text) {
    var box = $(id);
    box.textContent = text || '';
    box.hidden = !text;
  }

  function post(url) {
    return dashboard.requestJson(url, 'POST');
  }

  function isoDate(value) {  // DICOM YYYYMMDD as YYYY-MM-DD
    return /^\d{8}$/.test(value || '') ? value.slice(0, 4) + '-' + value.slice(4, 6) + '-' + value.slice(6) : value || '';
  }

  function localTime(iso) {
    var date = new Date(iso);
    return isNaN(date.getTime()) ? iso : date.toLocaleString(I18N.lang === 'ko' ? 'ko-KR' : undefined);
  }

  /** A small button drawn as the upload dialog draws its own (jQuery Mobile's classes, hover state). */
  function button(text, className, label) {
    var element = document.createElement('button');
    element.type = 'button';
    element.className = 'nn-btn nn-small nn-theme-c ' + (className || '');
    element.textContent = text;
    window.NeuroNovaUpload.styleButton(element);
    if (label) {
      element.setAttribute('aria-label', label);
    }
    return element;
  }

  // ---------------------------------------------------------------- moving a study

  function moveStudy(study, patient, who) {
    var question = t('Move the study of {who} ({count}) to {id} {name}? Every image is rewritten with the EMR ' +
      'identity; the old ID is kept in the audit trail.', {who: who, count: plural(study.instances, 'instance'),
                                                         id: patient.patient_id, name: patient.name});
    if (!window.confirm(question)) {
      return Promise.resolve(null);
    }
    return post(new URL('../studies/' + encodeURIComponent(study.study) + '/patient/' +
                        encodeURIComponent(patient.patient_id), PAGE_BASE).href)
      .then(function (answer) {
        var text = answer.moved_instances
          ? t('Study moved to {id}: {count} rewritten.', {id: answer.patient_id,
                                                           count: plural(answer.moved_instances, 'instance')})
          : t('Study settled under {id}.', {id: answer.patient_id});
        setMessage('nn-worklist-done', text);
        setMessage('nn-worklist-error', '');
        loadWorklist();
        dashboard.reloadStudies();
        return answer;
      });
  }

  /** The dialog to move one study to any EMR patient, searched as in the upload dialog. */
  var moveDialog = {
    study: null,
    patients: {},
    open: function (study) {
      this.study = study;
      var dialog = $('nn-move-dialog');
      $('nn-move-study').textContent = t('Study of {who}, {date}, {description}', {
        who: (study.patientName || '') + ' (' + study.patientId + ')', date: study.date || '-',
        description: study.description || '-'});
      $('nn-move-search').value = '';
      setMessage('nn-move-error', '');
      this.search('');
      if (!dialog.open) {
        dialog.showModal();
      }
      $('nn-move-search').focus();
    },
    search: function (text) {
      var self = this;
      var sequence = (this.sequence = (this.sequence || 0) + 1);
      dashboard.requestJson(PATIENTS_URL + '?search=' + encodeURIComponent(text.trim()) + '&limit=50')
        .then(function (answer) {
          if (sequence !== self.sequence) {
            return;
          }
          var select = $('nn-move-patient');
          var chosen = select.value;  // kept when the new list still has it
          select.innerHTML = '';
          select.appendChild(new Option(t('Choose a patient'), ''));
          self.patients = {};
          answer.patients.forEach(function (patient) {
            self.patients[patient.patient_id] = patient;
            select.appendChild(new Option(patient.patient_id + ' - ' + patient.name +
              (patient.birth_date ? ' (' + patient.birth_date + ')' : ''), patient.patient_id));
          });
          select.value = self.patients[chosen] ? chosen : '';
          self.update();
        })
        .catch(function (error) {
          setMessage('nn-move-error', t('Could not load the patient list: {error}', {error: error.message}));
        });
    },
    update: function () {
      var disabled = !$('nn-move-patient').value;
      $('nn-move-confirm').disabled = disabled;
      $('nn-move-confirm').classList.toggle('ui-disabled', disabled);
    },
    confirm: function () {
      var self = this;
      var patient = this.patients[$('nn-move-patient').value];
      if (!patient) {
        return;
      }
      var study = this.study;
      $('nn-move-confirm').disabled = true;
      moveStudy({study: study.study, instances: study.instances || 0}, patient, study.patientName || study.patientId)
        .then(function (answer) {
          if (answer) {
            $('nn-move-dialog').close();
          }
          self.update();
        })
        .catch(function (error) {
          setMessage('nn-move-error', t('Could not move the study: {error}', {error: error.message}));
          self.update();
        });
    }
  };

  window.NeuroNovaMove = {open: function (study) { moveDialog.open(study); }};

  // ---------------------------------------------------------------- the worklist

  function candidateBox(item, candidate) {
    var box = document.createElement('div');
    box.className = 'nn-candidate';
    var name = document.createElement('span');
    name.className = 'nn-patient-name';
    name.textContent = candidate.patient_id + ' ' + candidate.name;
    box.appendChild(name);
    dashboard.span(box, [candidate.birth_date ? t('born {date}', {date: candidate.birth_date}) : '']
      .concat(candidate.why.map(function (why) { return t(WHY[why] || why); })).filter(Boolean).join(' \u00b7 '),
    'nn-sub');
    var move = button(t('Move to {id}', {id: candidate.patient_id}), 'nn-move-candidate',
                      t('Move this study to {id} ({name})', {id: candidate.patient_id, name: candidate.name}));
    move.addEventListener('click', function () {
      move.disabled = true;
      moveStudy(item, candidate, item.patient.name || item.patient.patient_id)
        .catch(function (error) {
          setMessage('nn-worklist-error', t('Could not move the study: {error}', {error: error.message}));
        })
        .then(function () { move.disabled = false; });
    });
    box.appendChild(move);
    return box;
  }

  function renderWorklist(answer) {
    var body = $('nn-worklist-body');
    body.innerHTML = '';
    var badge = $('nn-worklist-count');
    badge.textContent = String(answer.total);
    badge.hidden = !answer.total;
    $('nn-worklist-status').textContent = (answer.total
      ? t('{studies} to settle.', {studies: plural(answer.total, 'study')})
      : t('Nothing to settle: every stored image has its EMR patient.')) +
      (answer.emr_available ? '' : ' ' + t('The EMR is unavailable: candidates cannot be looked up now.'));
    answer.studies.forEach(function (item) {
      var row = document.createElement('tr');
      row.setAttribute('data-study-id', item.study);
      var received = dashboard.cell(row);
      dashboard.span(received, item.patient.name || t('(no name)'), 'nn-patient-name');
      dashboard.span(received, item.patient.patient_id, 'nn-patient-id');
      var details = [item.patient.issuer ? t('Issuer {issuer}', {issuer: item.patient.issuer}) : '',
                     item.patient.birth_date ? t('born {date}', {date: isoDate(item.patient.birth_date)}) : '',
                     item.patient.sex ? t('sex {sex}', {sex: item.patient.sex}) : ''].filter(Boolean);
      var others = item.received_patient_ids.filter(function (id) { return id !== item.patient.patient_id; });
      if (others.length) {
        details.push(t('also received as {ids}', {ids: others.join(', ')}));
      }
      if (details.length) {
        dashboard.span(received, details.join(' \u00b7 '), 'nn-sub');
      }
      var study = dashboard.cell(row, item.study_description || '-');
      dashboard.span(study, isoDate(item.study_date) || '-', 'nn-sub');
      dashboard.cell(row, item.senders.join(', '));
      var when = dashboard.cell(row, localTime(item.first_received));
      if (item.last_received !== item.first_received) {
        dashboard.span(when, '\u2192 ' + localTime(item.last_received), 'nn-sub');
      }
      var status = dashboard.cell(row);
      Object.keys(item.actions).forEach(function (action) {
        dashboard.span(status, t(action) + ' ' + item.actions[action], 'nn-action nn-action-' + action);
      });
      dashboard.span(status, t('{unsettled} of {total} unsettled', {
        unsettled: item.unsettled_instances, total: plural(item.instances, 'instance')}), 'nn-sub');
      if (item.reasons.length) {
        status.title = item.reasons.join('\n');
      }
      var candidates = dashboard.cell(row, undefined, 'nn-candidates');
      if (!item.candidates.length) {
        dashboard.span(candidates, t('No candidate found.'), 'nn-none');
      }
      item.candidates.forEach(function (candidate) { candidates.appendChild(candidateBox(item, candidate)); });
      var other = button(t('Other patient...'), 'nn-move-other');
      other.addEventListener('click', function () {
        moveDialog.open({study: item.study, patientId: item.patient.patient_id, patientName: item.patient.name,
                         date: isoDate(item.study_date), description: item.study_description,
                         instances: item.instances});
      });
      candidates.appendChild(other);
      body.appendChild(row);
    });
    var pages = Math.ceil(answer.total / WORKLIST_PAGE);
    $('nn-worklist-pager').hidden = pages <= 1;
    $('nn-worklist-previous').disabled = worklistOffset === 0;
    $('nn-worklist-next').disabled = worklistOffset + WORKLIST_PAGE >= answer.total;
    $('nn-worklist-page').textContent = t('Page {page} of {pages}',
                                          {page: worklistOffset / WORKLIST_PAGE + 1, pages: pages});
  }

  function loadWorklist() {
    var query = new URLSearchParams({limit: String(WORKLIST_PAGE), offset: String(worklistOffset)});
    return dashboard.requestJson(WORKLIST_URL + '?' + query.toString())
      .then(function (answer) {
        if (!answer.studies.length && worklistOffset > 0) {  // the last page's studies were settled meanwhile
          worklistOffset = Math.max(0, Math.ceil(answer.total / WORKLIST_PAGE) - 1) * WORKLIST_PAGE;
          return loadWorklist();
        }
        setMessage('nn-worklist-error', '');
        renderWorklist(answer);
      })
      .catch(function (error) {
        setMessage('nn-worklist-error', t('Could not load the worklist: {error}', {error: error.message}));
      });
  }

  function reverify() {
    $('nn-reverify').disabled = true;
    post(REVERIFY_URL)
      .then(function (answer) {
        setMessage('nn-worklist-done', t('Checked with the EMR: {coerced} moved to their patient, {unchanged} ' +
          'confirmed, {unmatched} still unknown.', {coerced: plural(answer.coerced, 'instance'),
                                                     unchanged: plural(answer.unchanged, 'instance'),
                                                     unmatched: plural(answer.unmatched, 'instance')}));
        return loadWorklist();
      })
      .catch(function (error) {
        setMessage('nn-worklist-error', t('Could not check with the EMR: {error}', {error: error.message}));
      })
      .then(function () { $('nn-reverify').disabled = false; });
  }

  // ---------------------------------------------------------------- the history

  function historyQuery() {
    var params = new URLSearchParams({limit: String(HISTORY_PAGE + 1), offset: String(historyOffset)});
    var patient = $('nn-history-patient').value.trim();
    var study = $('nn-history-study').value.trim();
    var action = $('nn-history-action').value;
    var date = $('nn-history-date').value;
    if (patient) {
      params.set('patient', patient);
    }
    if (study) {
      params.set('study', study);
    }
    if (action) {
      params.set('action', action);
    }
    if (date) {  // the day as the browser's user means it, as UTC bounds
      var start = new Date(date + 'T00:00:00');
      params.set('since', start.toISOString());
      params.set('until', new Date(start.getTime() + 86400000).toISOString());
    }
    return HISTORY_URL + '?' + params.toString();
  }

  function renderHistory(entries) {
    var body = $('nn-history-body');
    body.innerHTML = '';
    var shown = entries.slice(0, HISTORY_PAGE);
    if (!shown.length) {
      var empty = document.createElement('tr');
      empty.className = 'nn-empty';
      dashboard.cell(empty, t('No entry matches the filters.')).colSpan = 9;
      body.appendChild(empty);
    }
    shown.forEach(function (entry) {
      var row = document.createElement('tr');
      row.setAttribute('data-action', entry.action);
      dashboard.cell(row, localTime(entry.time));
      dashboard.span(dashboard.cell(row), t(entry.action), 'nn-action nn-action-' + entry.action);
      dashboard.cell(row, entry.remote ? entry.path + ' (' + entry.remote + ')' : entry.path);
      dashboard.cell(row, entry.patient_before || '-');
      dashboard.cell(row, entry.patient_after || '-', 'nn-history-patient-after');
      var study = dashboard.cell(row, entry.study_instance_uid ? '\u2026' + entry.study_instance_uid.slice(-12) : '-');
      study.title = entry.study_instance_uid;
      dashboard.cell(row, dashboard.formatBytes(entry.bytes_before || 0) + ' \u2192 ' +
                     dashboard.formatBytes(entry.bytes_after || 0), 'nn-num');
      dashboard.cell(row, entry.user_name || '-', 'nn-history-user');
      dashboard.cell(row, entry.error || '', 'nn-history-note');
      body.appendChild(row);
    });
    $('nn-history-previous').disabled = historyOffset === 0;
    $('nn-history-next').disabled = entries.length <= HISTORY_PAGE;
    $('nn-history-page').textContent = t('Page {page}', {page: historyOffset / HISTORY_PAGE + 1});
  }

  function loadHistory() {
    return dashboard.requestJson(historyQuery())
      .then(function (answer) {
        setMessage('nn-history-error', '');
        renderHistory(answer.entries);
      })
      .catch(function (error) {
        setMessage('nn-history-error', t('Could not load the history: {error}', {error: error.message}));
      });
  }

  // ---------------------------------------------------------------- the pages

  function show() {
    var view = window.location.hash.replace('#', '') || 'studies';
    if (VIEWS.indexOf(view) < 0) {
      view = 'studies';
    }
    VIEWS.forEach(function (name) {
      $('nn-view-' + name).hidden = name !== view;
      $('nn-tab-' + name).classList.toggle('nn-tab-active', name === view);
      if (name === view) {
        $('nn-tab-' + name).setAttribute('aria-current', 'page');
      } else {
        $('nn-tab-' + name).removeAttribute('aria-current');
      }
    });
    var title = {studies: 'Studies', worklist: 'Worklist', history: 'History'}[view];
    $('nn-page-title').textContent = t(title);
    document.title = t(title);
    if (view === 'worklist') {
      loadWorklist();
    } else if (view === 'history') {
      loadHistory();
    }
  }

  // A pager's Previous (-1) and Next (+1) buttons, `prefix`-previous and `prefix`-next.
  function onPageTurn(prefix, turn) {
    $(prefix + '-previous').addEventListener('click', function () { turn(-1); });
    $(prefix + '-next').addEventListener('click', function () { turn(1); });
  }

  document.addEventListener('DOMContentLoaded', function () {
    var actions = $('nn-history-action');
    ACTIONS.forEach(function (action) { actions.appendChild(new Option(t(action), action)); });
    $('nn-history-filters').addEventListener('submit', function (event) {
      event.preventDefault();
      historyOffset = 0;
      loadHistory();
    });
    $('nn-history-reset').addEventListener('click', function () {
      $('nn-history-filters').reset();
      historyOffset = 0;
      loadHistory();
    });
    onPageTurn('nn-history', function (step) {
      historyOffset = Math.max(0, historyOffset + step * HISTORY_PAGE);
      loadHistory();
    });
    onPageTurn('nn-worklist', function (step) {
      worklistOffset = Math.max(0, worklistOffset + step * WORKLIST_PAGE);
      loadWorklist();
    });
    $('nn-reverify').addEventListener('click', reverify);
    $('nn-move-search').addEventListener('input', function () {
      clearTimeout(moveDialog.timer);
      moveDialog.timer = setTimeout(function () { moveDialog.search($('nn-move-search').value); }, 250);
    });
    $('nn-move-patient').addEventListener('change', function () { moveDialog.update(); });
    $('nn-move-cancel').addEventListener('click', function () { $('nn-move-dialog').close(); });
    $('nn-move-confirm').addEventListener('click', function () { moveDialog.confirm(); });
    $('nn-refresh').addEventListener('click', function () {
      if (!$('nn-view-worklist').hidden) {
        loadWorklist();
      } else if (!$('nn-view-history').hidden) {
        loadHistory();
      }
    });
    window.addEventListener('hashchange', show);
    window.setInterval(function () {
      if (document.visibilityState === 'visible' && !$('nn-view-worklist').hidden) {
        loadWorklist();
      }
    }, WORKLIST_REFRESH_MS);
    show();
    if ($('nn-view-worklist').hidden) {
      loadWorklist();  // the tab's count
    }
  });
})(window, document);
