/**
 * NeuroNova ingest: an "Upload DICOM" button on Orthanc Explorer's pages, opening the upload dialog
 * (with patient assignment from the EMR, batch upload and progress) served by the plugin.
 *
 * Orthanc serves this code inside <prefix>/plugins/explorer.js, loaded by <prefix>/app/explorer.html
 * after jQuery 1.7 and jQuery Mobile 1.1: the plugin's files are at <prefix>/neuronova/app/.
 */
(function () {
  'use strict';

  var here = (document.currentScript && document.currentScript.src) || window.location.href;
  var appBase = new URL('../neuronova/app/', here).href;
  var loading = null;

  function loadDialog() {
    if (window.NeuroNovaUpload) {
      return Promise.resolve(window.NeuroNovaUpload);
    }
    if (!loading) {
      loading = new Promise(function (resolve, reject) {
        var style = document.createElement('link');
        style.rel = 'stylesheet';
        style.href = appBase + 'upload-dialog.css';
        document.head.appendChild(style);
        var script = document.createElement('script');
        script.src = appBase + 'upload-dialog.js';
        script.onload = function () { resolve(window.NeuroNovaUpload); };
        script.onerror = function () {
          loading = null;
          style.remove();
          script.remove();
          reject(new Error('could not load ' + script.src));
        };
        document.head.appendChild(script);
      });
    }
    return loading;
  }

  /** After an upload, redraw the page shown (patient lists, a patient's studies...) as Explorer does. */
  function refreshActivePage() {
    var page = $.mobile && $.mobile.activePage;
    if (page && page.length && page.attr('id') !== 'lookup') {
      page.trigger('pagebeforeshow');
    }
  }

  // Before jQuery Mobile enhances a page: add the button to its header's left-hand group (after "Lookup"
  // and "Plugins"; the right-hand one already holds three buttons and would cover long page titles).
  $(document).on('pagebeforecreate', '[data-role="page"]', function () {
    var group = $(this).children('[data-role="header"]').children('.ui-btn-left');
    if (group.length === 0 || group.find('.neuronova-upload-open').length > 0) {
      return;
    }
    $('<a>')
      .attr({
        href: '#',
        role: 'button',  // it opens a dialog, it goes nowhere
        'data-role': 'button',
        'data-icon': 'plus',
        'class': 'neuronova-upload-open',
        title: 'Upload DICOM files, assigning them to an EMR patient'
      })
      .text('Upload DICOM')
      .appendTo(group);
  });

  $(document).on('click', '.neuronova-upload-open', function (event) {
    event.preventDefault();
    loadDialog().then(function (dialog) {
      dialog.open({onUploaded: refreshActivePage, studyListLink: true});
    }, function (error) {
      window.alert('NeuroNova: the upload dialog is not available (' + error.message + ').');
    });
  });
})();
